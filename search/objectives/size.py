"""Size of a ``.tflite`` file: as stored, and as shipped compressed.

The raw size is what a device keeps in flash. The gzip size is where unstructured pruning shows:
TFLite stores zeroed weights densely, so a 50%-sparse model is as large as a dense one on disk
until something compresses the runs of zeros (an app bundle, an OTA update).
"""

from __future__ import annotations

import gzip
from typing import Any

from search.objectives.objective import Artifact, MeasureContext, Measurement

__all__ = ["size_bytes", "gzip_size_bytes"]

# gzip's default level: within 1% of -9 on these models, but -9 spends ~20 s on a 24 MB half-zero
# float32 model (lazy matching over long zero runs), which every pruned float32 trial would pay.
GZIP_LEVEL = 6


def size_bytes(content: bytes) -> int:
    """Bytes of the flatbuffer ``content``, exactly as written to the ``.tflite`` file."""
    return len(content)


def gzip_size_bytes(content: bytes) -> int:
    """Bytes of ``content`` after ``gzip`` at ``GZIP_LEVEL`` (``mtime=0``, so the same content always gives the same size)."""
    return len(gzip.compress(content, compresslevel=GZIP_LEVEL, mtime=0))


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    return {"size_bytes": size_bytes(artifact.content), "size_gzip_bytes": gzip_size_bytes(artifact.content)}


def how(m, metrics: dict[str, Any]) -> str:
    return f"bytes of model.tflite; size_gzip_bytes after gzip (level {GZIP_LEVEL})"


MEASUREMENT = Measurement("size", values=("size_bytes", "size_gzip_bytes"), details=(), measure=measure, how=how, always=True)
