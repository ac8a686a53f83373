"""Files: writes that a killed process can never leave half done, content hashes, and the check
that a folder can be written before anything is put there."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_bytes_atomic(path: str | Path, content: bytes) -> None:
    """Write to a temp file beside ``path``, then rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def temp_path_beside(path: str | Path) -> Path:
    """A name beside ``path`` that no other process uses: write there, then ``os.replace``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (weights files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unwritable_folder(path: str | Path) -> Path | None:
    """None when ``path`` is, or can be made as, a folder this process writes to; else the
    nearest existing ancestor that stands in the way (a file, or a folder without write access)."""
    path = Path(path).resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return existing or path
