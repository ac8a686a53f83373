"""Raw YOLO heads -> boxes and scores -> per-class greedy NMS, in plain numpy, for any ``YoloHeads``.

This runs on every validation image of every trial, for the Keras model and for each TFLite
variant alike, so it stays outside any graph (quantization never touches it) and is vectorised:
one pass over all cells and anchors, and an NMS loop that stops after ``max_detections`` boxes.

The box formula is Darknet's ``[yolo]`` layer with ``scale_x_y``::

    x = (col + sigmoid(tx) * s - (s - 1) / 2) / grid_w      w = exp(tw) * anchor_w / resolution

or, for ``new_coords`` heads (already through a logistic), ``x = (col + tx * s - (s - 1) / 2) /
grid_w`` and ``w = (2 tw)^2 * anchor_w / resolution``, scores ``obj * cls`` as they are,

with anchors in pixels of the network input, head ``k`` using anchors ``heads.masks[k]``, and
class scores ``sigmoid(obj) * sigmoid(cls)`` as Darknet and OpenCV report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from search.models.family import YoloHeads

# Logits beyond these only add float overflow warnings: sigmoid(±30) is 0/1 to float32
# precision, and exp(12) anchors are already thousands of images wide (then clipped to 1).
_MAX_LOGIT = 30.0
_MAX_LOG_SIZE = 12.0

# Per-class NMS runs as one NMS by shifting each class's boxes to its own region of the plane;
# boxes live in [0, 1], so a shift of 2 per class keeps every two classes from overlapping.
_CLASS_OFFSET = 2.0

# NMS looks at the best 30,000 (box, class) pairs at most, as Ultralytics' `max_nms` does. A
# trained model has a few hundred above 0.001; only an untrained or broken one has more (up to
# 200,000 at 416 px and 80 classes), and exact NMS over those would take seconds per image.
_MAX_CANDIDATES = 30_000


@dataclass(frozen=True)
class Detections:
    """The detections of one image, best score first.

    ``boxes`` are normalized ``[x_min, y_min, x_max, y_max]`` in model-input coordinates (0..1);
    for a letterboxed or stretched input the caller maps them back to the original image.
    """

    boxes: np.ndarray  # (K, 4) float32
    scores: np.ndarray  # (K,) float32
    classes: np.ndarray  # (K,) int32

    def __len__(self) -> int:
        return len(self.scores)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -_MAX_LOGIT, _MAX_LOGIT)))


@lru_cache(maxsize=32)
def _head_priors(grid: int, head_anchors: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, ...]:
    """Column, row, anchor width and height (pixels) of every (cell, anchor) of one head, flattened.

    Cached per grid size and anchors: a search decodes thousands of images at the same few resolutions.
    """
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")
    anchors = np.asarray(head_anchors, dtype=np.float32)
    priors = (
        np.repeat(cols.reshape(-1), len(head_anchors)),
        np.repeat(rows.reshape(-1), len(head_anchors)),
        np.tile(anchors[:, 0], grid * grid),
        np.tile(anchors[:, 1], grid * grid),
    )
    for array in priors:
        array.flags.writeable = False  # shared by every call
    return priors


def _heads_by_stride(outputs, *, heads: YoloHeads, resolution: int) -> list[np.ndarray]:
    """The raw heads as ``(grid, grid, A, 5+C)`` arrays in ``heads.strides`` order, found by grid size.

    Matching by grid size rather than position lets TFLite outputs, whose order the converter
    may change, be passed as they come.
    """
    if len(outputs) != len(heads.strides):
        raise ValueError(f"expected {len(heads.strides)} YOLO heads, but got {len(outputs)}.")
    by_grid = {}
    for output in outputs:
        head = np.asarray(output, dtype=np.float32)
        if head.ndim == 4:
            if head.shape[0] != 1:
                raise ValueError(f"decode takes the heads of one image, but got a batch of {head.shape[0]}.")
            head = head[0]
        by_grid[head.shape[0]] = head
    found = []
    for stride, grid in zip(heads.strides, heads.grids(resolution)):
        head = by_grid.get(grid)
        if head is None or head.shape != (grid, grid, heads.channels):
            shapes = [tuple(np.shape(o)) for o in outputs]
            raise ValueError(
                f"no head of shape ({grid}, {grid}, {heads.channels}) for stride {stride} at resolution "
                f"{resolution} and {heads.num_classes} classes; got {shapes}."
            )
        found.append(head.reshape(grid, grid, heads.anchors_per_head, 5 + heads.num_classes))
    return found


def decode(outputs, *, heads: YoloHeads, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw heads of ONE image (one array per head, with or without a leading batch of 1) -> boxes, scores.

    Returns ``boxes`` ``(M, 4)`` normalized ``xyxy`` clipped to ``[0, 1]`` and ``class_scores``
    ``(M, C)`` = ``sigmoid(obj) * sigmoid(cls)``, with M = anchors per head * (cells of all heads).
    """
    boxes, class_scores = [], []
    scale = heads.scale_x_y
    shift = (scale - 1.0) / 2.0
    raw_heads = _heads_by_stride(outputs, heads=heads, resolution=resolution)
    for index, (head, grid) in enumerate(zip(raw_heads, heads.grids(resolution))):
        cols, rows, anchor_w, anchor_h = _head_priors(grid, heads.head_anchors(index))
        raw = head.reshape(-1, 5 + heads.num_classes)
        # new_coords: the heads are probabilities already, and sizes are (2 t)^2 anchors, not e^t.
        probability = (lambda v: v) if heads.new_coords else _sigmoid
        x = (cols + probability(raw[:, 0]) * scale - shift) / grid
        y = (rows + probability(raw[:, 1]) * scale - shift) / grid
        if heads.new_coords:
            size_w, size_h = (2.0 * raw[:, 2]) ** 2, (2.0 * raw[:, 3]) ** 2
        else:
            size_w, size_h = np.exp(np.minimum(raw[:, 2], _MAX_LOG_SIZE)), np.exp(np.minimum(raw[:, 3], _MAX_LOG_SIZE))
        half_w, half_h = size_w * anchor_w / (2.0 * resolution), size_h * anchor_h / (2.0 * resolution)
        boxes.append(np.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=1))
        class_scores.append(probability(raw[:, 4:5]) * probability(raw[:, 5:]))
    boxes = np.clip(np.concatenate(boxes), 0.0, 1.0).astype(np.float32)
    return boxes, np.concatenate(class_scores).astype(np.float32)


def _empty() -> Detections:
    return Detections(
        boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32), classes=np.zeros((0,), np.int32)
    )


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float, max_kept: int) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best first; stops once ``max_kept`` are kept."""
    order = np.argsort(-scores, kind="stable")
    # One contiguous array per coordinate, in score order: each round compares the best survivor
    # with the rest as plain slices, where gathering rows of ``boxes`` would dominate the time.
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, i]) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    kept = []
    while order.size and len(kept) < max_kept:
        kept.append(order[0])
        width = np.clip(np.minimum(x2[0], x2[1:]) - np.maximum(x1[0], x1[1:]), 0.0, None)
        height = np.clip(np.minimum(y2[0], y2[1:]) - np.maximum(y1[0], y1[1:]), 0.0, None)
        inter = width * height
        iou = inter / np.maximum(areas[0] + areas[1:] - inter, 1e-12)
        # Darknet and OpenCV suppress only above the threshold, so an IoU equal to it survives.
        survivors = iou <= iou_threshold
        order, x1, y1, x2, y2, areas = (a[1:][survivors] for a in (order, x1, y1, x2, y2, areas))
    return np.asarray(kept, dtype=np.int64)


def non_max_suppression(
    boxes: np.ndarray,
    class_scores: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    multi_label: bool = True,
) -> Detections:
    """Per-class greedy NMS over ``boxes`` ``(M, 4)`` and ``class_scores`` ``(M, C)``.

    A (box, class) pair is a candidate when its score is strictly above ``score_threshold``.
    ``multi_label=True`` makes every such pair a candidate (what mAP evaluation wants: a box may
    be both a dog and a cat); ``False`` keeps only each box's best class (OpenCV's reference).
    At most ``max_detections`` survive, best score first. Only the best ``_MAX_CANDIDATES``
    pairs enter NMS, which changes nothing for a model that has learned anything.
    """
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, but got {max_detections}.")
    if multi_label:
        box_index, classes = np.nonzero(class_scores > score_threshold)
        scores = class_scores[box_index, classes]
    else:
        classes = np.argmax(class_scores, axis=1)
        scores = class_scores[np.arange(len(class_scores)), classes]
        box_index = np.nonzero(scores > score_threshold)[0]
        classes, scores = classes[box_index], scores[box_index]
    if box_index.size == 0:
        return _empty()
    if box_index.size > _MAX_CANDIDATES:
        best = np.argpartition(-scores, _MAX_CANDIDATES - 1)[:_MAX_CANDIDATES]
        box_index, classes, scores = box_index[best], classes[best], scores[best]
    candidates = boxes[box_index]
    # float64: at class 79 the shift is 158, where float32 would round tiny boxes' edges.
    shifted = candidates.astype(np.float64) + (classes * _CLASS_OFFSET)[:, None]
    kept = _greedy_nms(shifted, scores, iou_threshold=iou_threshold, max_kept=max_detections)
    return Detections(
        boxes=candidates[kept].astype(np.float32),
        scores=scores[kept].astype(np.float32),
        classes=classes[kept].astype(np.int32),
    )


def detect(
    outputs,
    *,
    heads: YoloHeads,
    resolution: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    multi_label: bool = True,
) -> Detections:
    """Raw heads of one image -> its detections (``decode`` then ``non_max_suppression``).

    The thresholds have no defaults here: a search reads them from its space
    (``search.space.MeasureSpec``, the one place their values and reasons are written)."""
    boxes, class_scores = decode(outputs, heads=heads, resolution=resolution)
    return non_max_suppression(
        boxes,
        class_scores,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        multi_label=multi_label,
    )
