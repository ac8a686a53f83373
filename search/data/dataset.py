"""What every loader returns: a dataset of two splits of labelled images, in one format.

Boxes are kept normalized ``[x_min, y_min, x_max, y_max]`` of the ORIGINAL image, whatever the
file format said, so preprocessing (``search.data.preprocess``) and evaluation
(``objectives.accuracy``) convert from a single convention.

``Example`` holds numpy arrays, which have no meaningful ``==`` or hash; it compares and hashes
by identity (``eq=False``), and memoisation keys are built from its paths instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True, eq=False)
class Example:
    """One image and its boxes; an image without boxes is a valid negative."""

    image_path: Path
    width: int  # original image size in pixels
    height: int
    boxes: np.ndarray  # (K, 4) float32, normalized xyxy of the original image
    classes: np.ndarray  # (K,) int32 in 0..num_classes-1
    image_id: int  # unique within its split; COCO's own id when loaded from COCO


@dataclass(frozen=True)
class Split:
    name: str  # "train" or "val"
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_boxes(self) -> int:
        return sum(len(e.classes) for e in self.examples)


@dataclass(frozen=True)
class Dataset:
    names: tuple[str, ...]
    train: Split
    val: Split
    source: str  # where it came from (a path), recorded in run.json
    # COCO only: class index -> the file's category id (COCO's 1..90), to map predictions back.
    category_ids: tuple[int, ...] | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.names)


def no_boxes() -> tuple[np.ndarray, np.ndarray]:
    """The ``(boxes, classes)`` of a negative image, with the dtypes every loader uses."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
