"""mAP by hand-built cases whose AP is derived here, each checked against pycocotools directly."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from search.objectives.accuracy import evaluate_detections, measure_accuracy
from search.data import Example, Split, image_boxes_to_model, model_boxes_to_image, split_arrays
from search.errors import DataError
from search.models import get_family
from search.models.decode import Detections
from search.models.yolov4_tiny.constants import ANCHORS, MASKS, SCALE_X_Y, STRIDES

RESOLUTION = 64
HEADS_2 = get_family("yolov4_tiny").heads(2)  # the stock heads at two classes
DETECTION = {"score_threshold": 0.001, "iou_threshold": 0.45, "max_detections": 100}  # search.space.MeasureSpec's
# Two images of different shapes, so letterbox pads one sideways and one vertically.
SIZES = ((200, 100), (120, 160))


def _split(pixel_boxes, classes, *, folder: Path = Path("unused")) -> Split:
    """Examples of ``SIZES`` with boxes given in pixels ``[x0, y0, x1, y1]``."""
    examples = []
    for image_id, ((width, height), boxes, labels) in enumerate(zip(SIZES, pixel_boxes, classes)):
        normalized = np.asarray(boxes, np.float32).reshape(-1, 4) / np.float32([width, height, width, height])
        examples.append(
            Example(folder / f"{image_id}.png", width, height, normalized, np.asarray(labels, np.int32), image_id)
        )
    return Split("val", tuple(examples))


def _detections(split: Split, pixel_boxes, scores, classes, *, mode: str) -> list[Detections]:
    """Detections given in pixels of the original images, turned into model-input coordinates."""
    found = []
    for example, boxes, image_scores, labels in zip(split.examples, pixel_boxes, scores, classes):
        scale = np.float32([example.width, example.height, example.width, example.height])
        normalized = np.asarray(boxes, np.float32).reshape(-1, 4) / scale
        model = image_boxes_to_model(normalized, width=example.width, height=example.height, resolution=RESOLUTION, mode=mode)
        found.append(Detections(model, np.asarray(image_scores, np.float32), np.asarray(labels, np.int32)))
    return found


def _pycocotools_stats(gt_boxes, gt_classes, det_boxes, det_scores, det_classes) -> dict[str, float]:
    """The same case fed to pycocotools directly, in pixel ``[x, y, w, h]``, written out by hand."""
    images = [{"id": i, "width": w, "height": h} for i, (w, h) in enumerate(SIZES)]
    annotations = []
    for image_id, (boxes, labels) in enumerate(zip(gt_boxes, gt_classes)):
        for (x0, y0, x1, y1), label in zip(boxes, labels):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )
    results = []
    for image_id, (boxes, scores, labels) in enumerate(zip(det_boxes, det_scores, det_classes)):
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            results.append({"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50": evaluation.stats[1], "map": evaluation.stats[0]}


GT_BOXES = ([[20, 10, 80, 60]], [[10, 20, 60, 100], [70, 30, 110, 150]])
GT_CLASSES = ([0], [0, 1])

# (det boxes, scores, classes, expected map50, expected map); 2 images, class 0 has 2 boxes.
CASES = {
    "perfect": (GT_BOXES, ([0.9], [0.8, 0.7]), GT_CLASSES, 1.0, 1.0),
    # Class 0: FP (0.95) ranked above both TPs: precision 1/2 at recall 1/2, 2/3 at recall 1;
    # COCO makes precision monotone from the right, so all 101 recall points read 2/3.
    # Class 1 is perfect, so the mean is (2/3 + 1) / 2.
    "false positive first": (
        ([[20, 10, 80, 60], [150, 60, 190, 95]], [[10, 20, 60, 100], [70, 30, 110, 150]]),
        ([0.9, 0.95], [0.8, 0.7]),
        ([0, 0], [0, 1]),
        (2 / 3 + 1) / 2,
        (2 / 3 + 1) / 2,
    ),
    # Class 0: TP 0.9, FP 0.8, TP 0.7: precision 1 up to recall 1/2 (51 of the 101 recall points,
    # 0.00 .. 0.50), then 2/3 for the 50 points above: AP = (51 + 50 * 2/3) / 101.
    "false positive between": (
        ([[20, 10, 80, 60], [150, 60, 190, 95]], [[10, 20, 60, 100], [70, 30, 110, 150]]),
        ([0.9, 0.8], [0.7, 0.6]),
        ([0, 0], [0, 1]),
        ((51 + 50 * 2 / 3) / 101 + 1) / 2,
        ((51 + 50 * 2 / 3) / 101 + 1) / 2,
    ),
    # Every box slid sideways so IoU = (w - d) / (w + d) ~ 0.626 (d = 23 of w = 100 for the first;
    # the others by the same fraction): matches at IoU 0.50, 0.55, 0.60, not at 0.65 .. 0.95,
    # so AP@0.5 = 1 and AP@[.5:.95] = 3/10.
    "iou 0.626": (
        ([[20 + 60 * 0.23, 10, 80 + 60 * 0.23, 60]], [[10 + 50 * 0.23, 20, 60 + 50 * 0.23, 100], [70 + 40 * 0.23, 30, 110 + 40 * 0.23, 150]]),
        ([0.9], [0.8, 0.7]),
        GT_CLASSES,
        1.0,
        0.3,
    ),
}


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("case", list(CASES))
def test_map_of_hand_built_cases(case, mode):
    det_boxes, det_scores, det_classes, map50, map_ = CASES[case]
    split = _split(GT_BOXES, GT_CLASSES)
    found = _detections(split, det_boxes, det_scores, det_classes, mode=mode)

    result = evaluate_detections(split, found, resolution=RESOLUTION, preprocessing=mode)

    assert result["map50"] == pytest.approx(map50, abs=1e-6)
    assert result["map"] == pytest.approx(map_, abs=1e-6)
    reference = _pycocotools_stats(GT_BOXES, GT_CLASSES, det_boxes, det_scores, det_classes)
    assert result["map50"] == pytest.approx(reference["map50"], abs=1e-6)
    assert result["map"] == pytest.approx(reference["map"], abs=1e-6)


def test_no_detections_score_zero():
    split = _split(GT_BOXES, GT_CLASSES)
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
    assert evaluate_detections(split, [empty, empty], resolution=RESOLUTION, preprocessing="stretch") == {"map50": 0.0, "map": 0.0}


def test_split_without_boxes_is_a_data_error():
    split = _split(([], []), ([], []))
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
    with pytest.raises(DataError, match="val split has no labelled boxes"):
        evaluate_detections(split, [empty, empty], resolution=RESOLUTION, preprocessing="stretch")


def test_pycocotools_printing_is_silenced(capsys):
    det_boxes, det_scores, det_classes, _, _ = CASES["perfect"]
    split = _split(GT_BOXES, GT_CLASSES)
    evaluate_detections(split, _detections(split, det_boxes, det_scores, det_classes, mode="stretch"), resolution=RESOLUTION, preprocessing="stretch")
    assert capsys.readouterr().out == ""


def test_letterbox_box_mapping_and_round_trip():
    # 200x100 at 100 px: scaled by 0.5 to 100x50, centred with 25 px of padding above and below.
    whole = image_boxes_to_model(np.float32([[0, 0, 1, 1]]), width=200, height=100, resolution=100, mode="letterbox")
    np.testing.assert_allclose(whole, [[0, 0.25, 1, 0.75]], atol=1e-6)
    tall = image_boxes_to_model(np.float32([[0, 0, 1, 1]]), width=100, height=200, resolution=100, mode="letterbox")
    np.testing.assert_allclose(tall, [[0.25, 0, 0.75, 1]], atol=1e-6)

    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, size=(50, 2, 2)), axis=1)
    boxes = corners.transpose(0, 2, 1).reshape(50, 4)[:, [0, 2, 1, 3]].astype(np.float32)
    for mode in ("stretch", "letterbox"):
        for width, height in ((640, 480), (333, 500), (77, 77)):
            model = image_boxes_to_model(boxes, width=width, height=height, resolution=96, mode=mode)
            back = model_boxes_to_image(model, width=width, height=height, resolution=96, mode=mode)
            np.testing.assert_allclose(back, boxes, atol=1e-5)
            assert model.min() >= 0 and model.max() <= 1


def _raw_heads_for(boxes: np.ndarray, classes: np.ndarray, *, num_classes: int) -> list[np.ndarray]:
    """Raw YOLO head outputs that decode to exactly ``boxes`` (model coords), by inverting Darknet's formula.

    Each box goes to the coarse head's first anchor at the cell holding its centre; every other
    anchor gets objectness -10 (score ~5e-5, below the 0.001 threshold).
    """
    heads = []
    for stride in STRIDES:
        grid = RESOLUTION // stride
        head = np.zeros((1, grid, grid, 3, 5 + num_classes), np.float32)
        head[..., 4] = -10.0
        heads.append(head)
    grid = RESOLUTION // STRIDES[0]
    anchor_w, anchor_h = ANCHORS[MASKS[0][0]]
    shift = (SCALE_X_Y - 1) / 2
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    for (x0, y0, x1, y1), label in zip(boxes, classes):
        cx, cy = (x0 + x1) / 2 * grid, (y0 + y1) / 2 * grid
        col, row = int(cx), int(cy)
        raw = heads[0][0, row, col, 0]
        raw[0] = logit((cx - col + shift) / SCALE_X_Y)
        raw[1] = logit((cy - row + shift) / SCALE_X_Y)
        raw[2] = math.log((x1 - x0) * RESOLUTION / anchor_w)
        raw[3] = math.log((y1 - y0) * RESOLUTION / anchor_h)
        raw[4] = 10.0
        raw[5:] = -10.0
        raw[5 + label] = 10.0
    return [h.reshape(1, h.shape[1], h.shape[2], -1) for h in heads]


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_measure_accuracy_end_to_end_through_decode(tmp_path, mode):
    # One box per image, centres in different coarse cells; real image files for split_arrays.
    gt_boxes = ([[30, 20, 110, 80]], [[20, 90, 100, 150]])
    gt_classes = ([1], [0])
    for image_id, (width, height) in enumerate(SIZES):
        Image.new("RGB", (width, height), (40 * image_id, 90, 200)).save(tmp_path / f"{image_id}.png")
    split = _split(gt_boxes, gt_classes, folder=tmp_path)
    arrays = split_arrays(split, resolution=RESOLUTION, mode=mode)

    def answers(wrong_class: bool):
        heads = iter(
            _raw_heads_for(boxes, (1 - classes) if wrong_class else classes, num_classes=2)
            for boxes, classes in zip(arrays.boxes, arrays.classes)
        )

        def predict(image):
            assert image.dtype == np.float32 and image.shape == (RESOLUTION, RESOLUTION, 3)
            assert 0.0 <= image.min() and image.max() <= 1.0
            return next(heads)

        return predict

    right = measure_accuracy(answers(False), split, heads=HEADS_2, resolution=RESOLUTION, preprocessing=mode, **DETECTION)
    assert right["map50"] == pytest.approx(1.0)
    assert right["map"] == pytest.approx(1.0)
    wrong = measure_accuracy(answers(True), split, heads=HEADS_2, resolution=RESOLUTION, preprocessing=mode, **DETECTION)
    assert wrong == {"map50": 0.0, "map": 0.0}
