"""Writes that a killed process can never leave half done: a temp file beside, then a rename."""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: str | Path, content: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
