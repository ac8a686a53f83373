"""Images and boxes to the network input and back, the same way for training, calibration and mAP.

Every mode is a row of ``PREPROCESSING``; a row only says where the resized image lands on the
``r x r`` canvas (its ``Placement``), and the image, box and inverse-box functions all read that
placement, so the three can never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from search.data.dataset import Split
from search.spec import choose

# Letterbox padding: 0.5 grey, the value a [0, 1] network sees as "nothing here".
PAD_VALUE = 128


@dataclass(frozen=True)
class Placement:
    """Where an image resized to ``width x height`` pixels sits on the square canvas."""

    width: int
    height: int
    left: int
    top: int


def _stretch(width: int, height: int, resolution: int) -> Placement:
    return Placement(resolution, resolution, 0, 0)


def _letterbox(width: int, height: int, resolution: int) -> Placement:
    scale = resolution / max(width, height)
    new_width = max(1, min(resolution, round(width * scale)))
    new_height = max(1, min(resolution, round(height * scale)))
    return Placement(new_width, new_height, (resolution - new_width) // 2, (resolution - new_height) // 2)


@dataclass(frozen=True)
class PreprocessingMode:
    name: str
    place: Callable[[int, int, int], Placement]  # (width, height, resolution) -> placement
    description: str


PREPROCESSING: dict[str, PreprocessingMode] = {
    m.name: m
    for m in (
        PreprocessingMode(
            "stretch",
            _stretch,
            "resize to r x r ignoring aspect ratio; Darknet's and OpenCV's default, and ours",
        ),
        PreprocessingMode(
            "letterbox",
            _letterbox,
            "resize the longer side to r keeping aspect ratio, centre, pad with 0.5 grey",
        ),
    )
}


def preprocessing_mode(name: str) -> PreprocessingMode:
    """The row of ``PREPROCESSING`` called ``name``; any other name is a ``SpaceError`` naming the valid ones."""
    return choose(PREPROCESSING, name, what="preprocessing")


def load_image(path: Path) -> np.ndarray:
    """The image at ``path`` as uint8 ``(H, W, 3)`` RGB.

    EXIF orientation is deliberately NOT applied: label files (YOLO and COCO alike) give boxes in
    the stored pixel grid, whose size is what the loaders read from the header.
    """
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def preprocess(image: np.ndarray, *, resolution: int, mode: str) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(resolution, resolution, 3)`` (bilinear resize)."""
    height, width = image.shape[:2]
    placement = preprocessing_mode(mode).place(width, height, resolution)
    resized = Image.fromarray(image).resize((placement.width, placement.height), Image.Resampling.BILINEAR)
    if (placement.width, placement.height) == (resolution, resolution):
        return np.asarray(resized, dtype=np.uint8)
    canvas = np.full((resolution, resolution, 3), PAD_VALUE, dtype=np.uint8)
    canvas[placement.top : placement.top + placement.height, placement.left : placement.left + placement.width] = (
        np.asarray(resized, dtype=np.uint8)
    )
    return canvas


def _scale_and_offset(*, width: int, height: int, resolution: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``model = image * scale + offset`` for normalized xyxy boxes, as two (4,) vectors."""
    p = preprocessing_mode(mode).place(width, height, resolution)
    scale = np.array([p.width, p.height, p.width, p.height], np.float64) / resolution
    offset = np.array([p.left, p.top, p.left, p.top], np.float64) / resolution
    return scale, offset


def image_boxes_to_model(boxes: np.ndarray, *, width: int, height: int, resolution: int, mode: str) -> np.ndarray:
    """Normalized xyxy boxes of a ``width x height`` image -> normalized xyxy of the model input."""
    scale, offset = _scale_and_offset(width=width, height=height, resolution=resolution, mode=mode)
    return (np.asarray(boxes, np.float64).reshape(-1, 4) * scale + offset).astype(np.float32)


def model_boxes_to_image(boxes: np.ndarray, *, width: int, height: int, resolution: int, mode: str) -> np.ndarray:
    """The exact inverse of ``image_boxes_to_model`` (not clipped: a box may reach into padding)."""
    scale, offset = _scale_and_offset(width=width, height=height, resolution=resolution, mode=mode)
    return ((np.asarray(boxes, np.float64).reshape(-1, 4) - offset) / scale).astype(np.float32)


@dataclass(frozen=True)
class SplitArrays:
    """A split ready for the network: every image preprocessed, boxes in model-input coordinates."""

    images: np.ndarray  # uint8 (N, r, r, 3), read-only (shared by every caller in the process)
    boxes: tuple[np.ndarray, ...]  # per image (K, 4) float32 normalized xyxy of the model input
    classes: tuple[np.ndarray, ...]  # per image (K,) int32


def split_arrays(split: Split, *, resolution: int, mode: str) -> SplitArrays:
    """``split`` preprocessed at ``resolution`` with ``mode``; images memoised per process.

    Every trial trains, calibrates and evaluates on the same splits, and decoding a few hundred
    JPEGs costs more than evaluating a small model, so the images are decoded once per
    (files, resolution, mode). Boxes are cheap and always recomputed from the split.
    """
    preprocessing_mode(mode)  # fail on a bad name before touching any file
    # Keyed by path and modification time, not by the split object: two loads of the same
    # folder share the images, and a regenerated file is read again.
    files = tuple((str(e.image_path), _mtime_ns(e.image_path)) for e in split.examples)
    images = _preprocessed_images(files, resolution, mode)
    boxes, classes = [], []
    for example in split.examples:
        boxes.append(
            image_boxes_to_model(
                example.boxes, width=example.width, height=example.height, resolution=resolution, mode=mode
            )
        )
        classes.append(np.asarray(example.classes, np.int32))
    return SplitArrays(images=images, boxes=tuple(boxes), classes=tuple(classes))


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1  # load_image will then raise with the path in the message


# A handful of (split, resolution) pairs per worker: 128 images at 416 px are 66 MB each.
@lru_cache(maxsize=8)
def _preprocessed_images(files: tuple[tuple[str, int], ...], resolution: int, mode: str) -> np.ndarray:
    images = np.empty((len(files), resolution, resolution, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = preprocess(load_image(Path(path)), resolution=resolution, mode=mode)
    images.flags.writeable = False
    return images
