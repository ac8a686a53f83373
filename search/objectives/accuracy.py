"""mAP of a detector on a split, computed by pycocotools so the numbers mean what COCO's mean.

Detections arrive in model-input coordinates; they are mapped back through the same
preprocessing that made the input (``search.data.preprocess``) and compared with the labels in
pixels of the original image, so stretch and letterbox are scored on equal terms.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from search.data.dataset import Split
from search.data.preprocess import model_boxes_to_image, split_arrays
from search.errors import DataError
from search.objectives.objective import Artifact, MeasureContext, Measurement

# Inside the in-memory COCO objects a class index c is category c + 1: COCO reserves 0.
_CATEGORY_OFFSET = 1
# COCOeval.stats positions of the two numbers we report.
_STAT_MAP, _STAT_MAP50 = 0, 1


def evaluate_detections(split: Split, detections: Sequence, *, resolution: int, preprocessing: str) -> dict[str, float]:
    """``{"map50": AP@0.5, "map": AP@[.5:.95]}`` of ``detections`` (one per example, same order).

    Each detection object has ``.boxes`` ``(K, 4)`` normalized xyxy in model-input coordinates,
    ``.scores`` ``(K,)`` and ``.classes`` ``(K,)``. No detections at all scores 0.0.
    """
    if len(detections) != len(split.examples):
        raise ValueError(
            f"expected one detections object per image ({len(split.examples)}), but got {len(detections)}."
        )
    if split.num_boxes == 0:
        raise DataError(f"the {split.name} split has no labelled boxes, so its mAP is undefined")
    ground_truth = _ground_truth(split)
    results = _results(split, detections, resolution=resolution, preprocessing=preprocessing)
    if not results:
        return {"map50": 0.0, "map": 0.0}
    stats = _coco_stats(ground_truth, results)
    return {"map50": float(stats[_STAT_MAP50]), "map": float(stats[_STAT_MAP])}


def measure_accuracy(
    predict: Callable[[np.ndarray], Sequence[np.ndarray]],
    split: Split,
    *,
    heads,
    resolution: int,
    preprocessing: str,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> dict[str, float]:
    """Run ``predict`` on every image of ``split`` and score its decoded detections.

    ``predict`` takes one float32 ``(r, r, 3)`` image in ``[0, 1]`` and returns the raw YOLO
    head outputs, so a Keras model and every TFLite variant are measured by the same code;
    ``heads`` (the model family's ``YoloHeads``) says how they decode. The thresholds are the
    space's ``measure`` settings (``search.space.MeasureSpec``).
    """
    from search.models.decode import detect

    arrays = split_arrays(split, resolution=resolution, mode=preprocessing)
    detections = [
        detect(predict(image.astype(np.float32) / 255.0), heads=heads, resolution=resolution,
               score_threshold=score_threshold, iou_threshold=iou_threshold, max_detections=max_detections)
        for image in arrays.images
    ]
    return evaluate_detections(split, detections, resolution=resolution, preprocessing=preprocessing)


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    """mAP@0.5 and mAP@[.5:.95] of the converted model on the val split, in LiteRT."""
    from search.tflite_model import TFLiteDetector

    m = context.measure
    detector = TFLiteDetector(artifact.content, num_threads=context.num_threads)
    return measure_accuracy(
        detector, context.dataset.val, heads=context.heads, resolution=artifact.resolution,
        preprocessing=context.preprocessing, score_threshold=m.score_threshold, iou_threshold=m.iou_threshold,
        max_detections=m.max_detections,
    )


def how(m, metrics: dict[str, Any]) -> str:
    return (f"pycocotools COCOeval (bbox) on the val split; detections decoded from the converted model, "
            f"score > {m.score_threshold}, per-class NMS IoU {m.iou_threshold}, at most {m.max_detections} per image")


MEASUREMENT = Measurement("accuracy", values=("map50", "map"), details=(), measure=measure, how=how)


def _pixel_xywh(boxes: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Normalized xyxy of an image -> COCO's ``[x, y, w, h]`` in pixels, clipped to the image."""
    boxes = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0.0, 1.0) * [width, height, width, height]
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _ground_truth(split: Split) -> dict:
    images, annotations, classes = [], [], set()
    for example in split.examples:
        images.append({"id": example.image_id, "width": example.width, "height": example.height})
        pixel_boxes = _pixel_xywh(example.boxes, width=example.width, height=example.height)
        for box, class_index in zip(pixel_boxes, example.classes):
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO ids start at 1; 0 reads as "unmatched"
                    "image_id": example.image_id,
                    "category_id": int(class_index) + _CATEGORY_OFFSET,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
            classes.add(int(class_index))
    categories = [{"id": c + _CATEGORY_OFFSET, "name": str(c)} for c in sorted(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _results(split: Split, detections: Sequence, *, resolution: int, preprocessing: str) -> list[dict]:
    results = []
    for example, found in zip(split.examples, detections):
        if len(found.scores) == 0:
            continue
        image_boxes = model_boxes_to_image(
            found.boxes, width=example.width, height=example.height, resolution=resolution, mode=preprocessing
        )
        for box, score, class_index in zip(
            _pixel_xywh(image_boxes, width=example.width, height=example.height), found.scores, found.classes
        ):
            results.append(
                {
                    "image_id": example.image_id,
                    "category_id": int(class_index) + _CATEGORY_OFFSET,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return results


def _coco_stats(ground_truth: dict, results: list[dict]) -> np.ndarray:
    """COCOeval's 12 bbox stats; its progress printing is swallowed."""
    from pycocotools.coco import COCO  # here: it imports matplotlib, which validating a space need not pay
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats
