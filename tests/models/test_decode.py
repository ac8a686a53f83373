"""Decoding hand-built raw heads, and per-class greedy NMS against a plain-Python reference."""

import math

import numpy as np
import pytest

from search.models import YoloHeads, get_family
from search.models.decode import Detections, decode, detect, non_max_suppression

NUM_CLASSES = 3
RESOLUTION = 96  # coarse head 3x3, fine head 6x6
CHANNELS = 3 * (5 + NUM_CLASSES)
NMS = {"iou_threshold": 0.45, "max_detections": 100}  # the search's defaults (search.space.MeasureSpec)
HEADS = get_family("yolov4_tiny").heads(NUM_CLASSES)
SILENT = -30.0  # a logit whose sigmoid is 0 to float32 precision


def _logit(p):
    return math.log(p / (1 - p))


def _silent_heads():
    """Raw heads (with batch 1) where no anchor sees anything."""
    coarse = np.full((1, 3, 3, CHANNELS), SILENT, np.float32)
    fine = np.full((1, 6, 6, CHANNELS), SILENT, np.float32)
    return [coarse, fine]


def _set_anchor(head, *, row, col, anchor, tx, ty, tw, th, obj, classes):
    start = anchor * (5 + NUM_CLASSES)
    head[0, row, col, start : start + 5 + NUM_CLASSES] = [tx, ty, tw, th, obj, *classes]


@pytest.fixture()
def one_fine_object():
    """Fine head (stride 16), cell row 3 col 2, its first anchor (anchor 1 = 23x27 px)."""
    heads = _silent_heads()
    _set_anchor(
        heads[1], row=3, col=2, anchor=0,
        tx=_logit(0.8), ty=0.0, tw=math.log(2.0), th=0.0, obj=_logit(0.9), classes=[SILENT, 0.0, 2.0],
    )  # fmt: skip
    return heads


# Worked by hand: x = (2 + 0.8*1.05 - 0.025) / 6 = 0.4691667, y = (3 + 0.5*1.05 - 0.025) / 6 = 0.5833333,
# w = 2 * 23 / 96 = 0.4791667, h = 27 / 96 = 0.28125.
FINE_BOX = [0.2295833, 0.4427083, 0.7087500, 0.7239583]
FINE_SCORE_CLASS_2 = 0.9 * (1 / (1 + math.exp(-2.0)))  # 0.7927
FINE_SCORE_CLASS_1 = 0.9 * 0.5


def test_decode_gives_the_hand_computed_box_and_scores(one_fine_object):
    boxes, class_scores = decode(one_fine_object, heads=HEADS, resolution=RESOLUTION)
    assert boxes.shape == (3 * (9 + 36), 4) and class_scores.shape == (3 * (9 + 36), NUM_CLASSES)
    assert boxes.dtype == np.float32 and class_scores.dtype == np.float32
    best = np.argmax(class_scores[:, 2])
    np.testing.assert_allclose(boxes[best], FINE_BOX, atol=1e-6)
    np.testing.assert_allclose(class_scores[best], [0.0, FINE_SCORE_CLASS_1, FINE_SCORE_CLASS_2], atol=1e-6)
    # Every other anchor scores nothing.
    assert np.count_nonzero(class_scores > 1e-6) == 2


def test_coarse_head_uses_the_large_anchors_and_boxes_are_clipped():
    heads = _silent_heads()
    # Coarse head, centre cell, first anchor of MASKS[0] = anchor 3 (81x82 px), tx = ty = tw = th = 0.
    _set_anchor(heads[0], row=1, col=1, anchor=0, tx=0, ty=0, tw=0, th=0, obj=10.0, classes=[10.0, SILENT, SILENT])
    # Its third anchor (344x319 px) is wider than the image: clipped to [0, 1].
    _set_anchor(heads[0], row=0, col=0, anchor=2, tx=0, ty=0, tw=0, th=0, obj=10.0, classes=[SILENT, 10.0, SILENT])
    detections = detect(heads, heads=HEADS, resolution=RESOLUTION, score_threshold=0.5, **NMS)
    by_class = dict(zip(detections.classes.tolist(), detections.boxes))
    # x = y = (1 + 0.5) / 3 = 0.5, w = 81/96, h = 82/96.
    np.testing.assert_allclose(by_class[0], [0.5 - 81 / 192, 0.5 - 82 / 192, 0.5 + 81 / 192, 0.5 + 82 / 192], atol=1e-6)
    np.testing.assert_allclose(by_class[1], [0.0, 0.0, 1.0, 1.0], atol=1e-6)


def test_head_order_and_batch_axis_do_not_matter(one_fine_object):
    reference = detect(one_fine_object, heads=HEADS, resolution=RESOLUTION, score_threshold=0.001, **NMS)
    swapped = detect([h[0] for h in one_fine_object[::-1]], heads=HEADS, resolution=RESOLUTION, score_threshold=0.001, **NMS)
    for field in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(getattr(reference, field), getattr(swapped, field))


def test_heads_of_the_wrong_shape_are_refused(one_fine_object):
    with pytest.raises(ValueError, match="no head of shape"):
        decode(one_fine_object, heads=HEADS, resolution=128)
    with pytest.raises(ValueError, match="no head of shape"):
        decode(one_fine_object, heads=get_family("yolov4_tiny").heads(4), resolution=RESOLUTION)


def test_anchors_strides_and_scale_come_from_the_heads_given():
    # One head of stride 32 with two anchors, the second (64x48 px) first in its mask; no scale_x_y.
    heads = YoloHeads(anchors=((32, 32), (64, 48)), masks=((1, 0),), strides=(32,), scale_x_y=1.0, num_classes=1,
                      iou_thresh=0.2, ignore_thresh=0.7)  # fmt: skip
    head = np.full((3, 3, heads.channels), SILENT, np.float32)
    head[0, 2, :6] = [0.0, 0.0, 0.0, 0.0, 10.0, 10.0]  # row 0, col 2, slot 0
    found = detect([head], heads=heads, resolution=96, score_threshold=0.5, **NMS)
    x, y, w, h = 2.5 / 3, 0.5 / 3, 64 / 96, 48 / 96
    np.testing.assert_allclose(found.boxes, [[x - w / 2, 0.0, min(1.0, x + w / 2), y + h / 2]], atol=1e-6)
    assert heads.channels == 12 and found.classes.tolist() == [0]


def test_multi_label_keeps_every_class_above_threshold(one_fine_object):
    multi = detect(one_fine_object, heads=HEADS, resolution=RESOLUTION, score_threshold=0.3, **NMS)
    assert multi.classes.tolist() == [2, 1]
    np.testing.assert_allclose(multi.scores, [FINE_SCORE_CLASS_2, FINE_SCORE_CLASS_1], atol=1e-6)
    np.testing.assert_allclose(multi.boxes, [FINE_BOX, FINE_BOX], atol=1e-6)

    single = detect(one_fine_object, heads=HEADS, resolution=RESOLUTION, score_threshold=0.3, multi_label=False, **NMS)
    assert single.classes.tolist() == [2] and len(single) == 1
    # Below the best class's score nothing survives, whatever the other classes score.
    none = detect(one_fine_object, heads=HEADS, resolution=RESOLUTION, score_threshold=0.8, **NMS)
    assert len(none) == 0 and none.boxes.shape == (0, 4) and none.classes.dtype == np.int32


def _nms_kwargs(**overrides):
    return {"score_threshold": 0.1, "iou_threshold": 0.45, "max_detections": 100, **overrides}


def test_nms_suppresses_overlapping_boxes_of_one_class_only():
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.02, 0.0, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]], np.float32)
    same_class = np.array([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]], np.float32)
    kept = non_max_suppression(boxes, same_class, **_nms_kwargs())
    np.testing.assert_array_equal(kept.boxes, boxes[[0, 2]])
    np.testing.assert_allclose(kept.scores, [0.9, 0.7])

    other_class = np.array([[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]], np.float32)
    kept = non_max_suppression(boxes, other_class, **_nms_kwargs())
    assert kept.classes.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(kept.boxes, boxes)

    # The same overlap (IoU 0.92) survives an IoU threshold above it.
    assert len(non_max_suppression(boxes, same_class, **_nms_kwargs(iou_threshold=0.95))) == 3


def test_nms_keeps_at_most_max_detections_best_first():
    x = np.arange(10, dtype=np.float32) / 10
    boxes = np.stack([x, x * 0, x + 0.05, x * 0 + 0.05], axis=1)  # ten disjoint boxes
    scores = np.linspace(0.2, 0.9, 10, dtype=np.float32)[:, None]
    kept = non_max_suppression(boxes, scores, **_nms_kwargs(max_detections=3))
    np.testing.assert_allclose(kept.scores, scores[[9, 8, 7], 0])
    np.testing.assert_array_equal(kept.boxes, boxes[[9, 8, 7]])
    with pytest.raises(ValueError, match="max_detections"):
        non_max_suppression(boxes, scores, **_nms_kwargs(max_detections=0))


def _reference_nms(boxes, class_scores, *, score_threshold, iou_threshold):
    """Per-class greedy NMS written the slow, obvious way."""

    def iou(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    kept = set()
    for cls in range(class_scores.shape[1]):
        order = sorted((i for i in range(len(boxes)) if class_scores[i, cls] > score_threshold),
                       key=lambda i: -class_scores[i, cls])  # fmt: skip
        chosen = []
        for i in order:
            if all(iou(boxes[i], boxes[j]) <= iou_threshold for j in chosen):
                chosen.append(i)
        kept |= {(i, cls) for i in chosen}
    return kept


def test_nms_matches_a_plain_per_class_greedy_reference():
    rng = np.random.default_rng(7)
    centres, sizes = rng.random((300, 2)), rng.uniform(0.05, 0.3, (300, 2))
    boxes = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, 1).astype(np.float32)
    class_scores = rng.random((300, 4)).astype(np.float32) ** 3
    result = non_max_suppression(boxes, class_scores, **_nms_kwargs(max_detections=10_000))
    index_of = {tuple(b): i for i, b in enumerate(boxes.tolist())}
    got = {(index_of[tuple(b)], c) for b, c in zip(result.boxes.tolist(), result.classes.tolist())}
    assert got == _reference_nms(boxes, class_scores, score_threshold=0.1, iou_threshold=0.45)
    assert np.all(np.diff(result.scores) <= 0)
    assert isinstance(result, Detections) and result.scores.dtype == np.float32


def test_nms_over_more_candidates_than_it_examines_still_keeps_the_best():
    rng = np.random.default_rng(11)
    boxes = np.tile(np.array([[0.1, 0.1, 0.4, 0.4]], np.float32), (40_000, 1))  # all the same box
    boxes[::2] += 0.5  # ... and a second, disjoint one
    scores = rng.uniform(0.01, 0.99, (40_000, 1)).astype(np.float32)
    kept = non_max_suppression(boxes, scores, **_nms_kwargs(score_threshold=0.001))
    assert kept.scores.tolist() == sorted([scores[::2].max(), scores[1::2].max()], reverse=True)
