"""Checking one label box, shared by the YOLO and COCO loaders so both reject the same things."""

from __future__ import annotations

import math

from search.errors import DataError

# Label writers round (Ultralytics writes 6 decimals, COCO floats carry pixel fractions), so a
# box may poke past the border by a hair; 1% of the side is a rounding slip, more is a wrong box.
BOX_TOLERANCE = 0.01


def checked_box(x_min: float, y_min: float, x_max: float, y_max: float, *, where: str) -> list[float]:
    """A normalized xyxy box clipped to ``[0, 1]``, or a one-line ``DataError`` naming ``where``.

    Rejected: non-finite values, non-positive width or height, and coordinates beyond ``[0, 1]``
    by more than ``BOX_TOLERANCE``.
    """
    box = [x_min, y_min, x_max, y_max]
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"box {_show(box)} has a non-finite coordinate ({where})")
    if x_max <= x_min or y_max <= y_min:
        raise DataError(
            f"box {_show(box)} must have positive width and height, but got "
            f"{x_max - x_min:.6g} x {y_max - y_min:.6g} ({where})"
        )
    if min(box) < -BOX_TOLERANCE or max(box) > 1.0 + BOX_TOLERANCE:
        raise DataError(
            f"box {_show(box)} (normalized x_min y_min x_max y_max) must lie inside the image, "
            f"0..1 give or take {BOX_TOLERANCE} ({where})"
        )
    return [min(max(v, 0.0), 1.0) for v in box]


def _show(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in box) + "]"
