"""The YOLO targets, loss and training loop, on real TensorFlow and a real YOLOv4-tiny at 64 px."""

import numpy as np
import pytest

from search.compat import keras, tf
from search.errors import DataError
from search.models import get_family
from search.models.decode import decode
from search.models.yolov4_tiny.builder import build_yolov4_tiny
from search.train import _ciou, build_targets, decode_head, learning_rate_at, train, yolo_loss

RESOLUTION = 64
NUM_CLASSES = 2
FAMILY = get_family("yolov4_tiny")
HEADS = FAMILY.heads(NUM_CLASSES)


def _shapes(count: int, *, seed: int):
    """``count`` 64 px images, each with one bright square (class 0) or disc (class 1) on grey."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:RESOLUTION, 0:RESOLUTION]
    images = np.full((count, RESOLUTION, RESOLUTION, 3), 100, np.uint8)
    boxes, classes = [], []
    for i in range(count):
        size = rng.uniform(0.2, 0.45)
        x_min, y_min = rng.uniform(0, 1 - size, 2)
        class_id = i % NUM_CLASSES
        x0, y0, x1, y1 = np.array([x_min, y_min, x_min + size, y_min + size]) * RESOLUTION
        if class_id == 0:
            inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
        else:
            inside = (cols - (x0 + x1) / 2) ** 2 + (rows - (y0 + y1) / 2) ** 2 <= ((x1 - x0) / 2) ** 2
        images[i][inside] = (230, 40, 40) if class_id == 0 else (40, 220, 60)
        boxes.append(np.array([[x_min, y_min, x_min + size, y_min + size]], np.float32))
        classes.append(np.array([class_id], np.int32))
    return images, boxes, classes


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return build_yolov4_tiny(num_classes=NUM_CLASSES, resolution=RESOLUTION)


def test_small_box_whose_best_anchor_is_unmasked_goes_to_best_masked_anchor():
    # 8x8 px: best shape IoU is anchor 0 (in no mask, 0.457), then anchor 1 (0.103 < 0.213).
    # Centre (40, 20) px -> fine grid 4: column int(2.5) = 2, row int(1.25) = 1; anchor 1 is slot 0.
    box = np.array([[36, 16, 44, 24]], np.float32) / RESOLUTION
    coarse, fine, true_boxes = build_targets([box], [np.array([1])], heads=HEADS, resolution=RESOLUTION)
    assert coarse.shape == (1, 2, 2, 3, 5 + NUM_CLASSES) and fine.shape == (1, 4, 4, 3, 5 + NUM_CLASSES)
    assert coarse.sum() == 0
    np.testing.assert_allclose(fine[0, 1, 2, 0], [0.625, 0.3125, 0.125, 0.125, 1, 0, 1])
    assert np.count_nonzero(fine[..., 4]) == 1
    np.testing.assert_allclose(true_boxes[0, 0], box[0])
    assert true_boxes.shape == (1, 100, 4) and not true_boxes[0, 1:].any()


def test_box_goes_to_best_anchor_and_every_anchor_over_iou_thresh_in_every_head():
    # At 416 px a 135x169 box is anchor 4 exactly (coarse slot 1); anchor 3 has IoU 0.291 > 0.213
    # and sits in both masks (coarse slot 0, fine slot 2); anchor 5 has 0.208 and stays out.
    resolution = 416
    box = np.array([[208 - 67.5, 208 - 84.5, 208 + 67.5, 208 + 84.5]], np.float32) / resolution
    coarse, fine, _ = build_targets([box], [np.array([0])], heads=FAMILY.heads(1), resolution=resolution)
    assert [tuple(i) for i in np.argwhere(coarse[..., 4])] == [(0, 6, 6, 0), (0, 6, 6, 1)]
    assert [tuple(i) for i in np.argwhere(fine[..., 4])] == [(0, 13, 13, 2)]
    np.testing.assert_allclose(coarse[0, 6, 6, 1, :4], [0.5, 0.5, 135 / 416, 169 / 416], rtol=1e-6)


def test_bad_boxes_raise_data_error():
    with pytest.raises(DataError, match="class ids"):
        build_targets([np.array([[0.1, 0.1, 0.5, 0.5]])], [np.array([2])], heads=HEADS, resolution=64)
    with pytest.raises(DataError, match="x_max > x_min"):
        build_targets([np.array([[0.5, 0.1, 0.5, 0.5]])], [np.array([0])], heads=HEADS, resolution=64)


def test_tf_decode_matches_the_numpy_decoder():
    rng = np.random.default_rng(0)
    channels = 3 * (5 + NUM_CLASSES)
    outputs = [rng.normal(0, 2, (1, g, g, channels)).astype(np.float32) for g in (2, 4)]
    reference_boxes, _ = decode(outputs, heads=HEADS, resolution=RESOLUTION)
    ours = []
    for index, output in enumerate(outputs):
        grid = output.shape[1]
        raw = tf.reshape(output, (1, grid, grid, 3, 5 + NUM_CLASSES))
        xywh = decode_head(raw, heads=HEADS, index=index, resolution=RESOLUTION).numpy().reshape(-1, 4)
        ours.append(np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1))
    np.testing.assert_allclose(np.clip(np.concatenate(ours), 0, 1), reference_boxes, atol=1e-5)


def test_ciou_is_one_for_identical_boxes_and_negative_for_distant_ones():
    box = tf.constant([[0.5, 0.5, 0.2, 0.3]])
    np.testing.assert_allclose(_ciou(box, box).numpy(), [1.0], atol=1e-6)
    assert _ciou(box, tf.constant([[0.9, 0.1, 0.1, 0.1]])).numpy()[0] < 0


def test_loss_and_its_gradients_are_finite_with_no_boxes():
    model = _model()
    images = np.random.default_rng(0).uniform(0, 1, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    empty = [np.zeros((0, 4), np.float32)] * 2
    targets = build_targets(empty, [np.zeros(0, np.int32)] * 2, heads=HEADS, resolution=RESOLUTION)
    with tf.GradientTape() as tape:
        loss = yolo_loss(targets, model(images, training=True), heads=HEADS, resolution=RESOLUTION)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0  # objectness of every cell is a negative
    assert all(np.isfinite(g.numpy()).all() for g in gradients if g is not None)


def test_loss_falls_when_overfitting_two_images():
    images, boxes, classes = _shapes(2, seed=0)
    losses = train(
        _model(), heads=HEADS, images=images, boxes=boxes, classes=classes,
        steps=30, batch_size=2, learning_rate=1e-3, augment=False,
    )
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3]), losses


def test_train_is_reproducible_with_the_same_seed():
    images, boxes, classes = _shapes(6, seed=1)
    runs = [
        train(
            _model(), heads=HEADS, images=images, boxes=boxes, classes=classes,
            steps=4, batch_size=3, seed=seed,
        )
        for seed in (7, 7)
    ]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def test_train_rejects_images_of_another_resolution():
    images, boxes, classes = _shapes(2, seed=0)
    with pytest.raises(DataError, match="64 px but the model takes 96 px"):
        keras.utils.set_random_seed(0)
        model = build_yolov4_tiny(num_classes=NUM_CLASSES, resolution=96)
        train(model, heads=HEADS, images=images, boxes=boxes, classes=classes, steps=1)


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate_at(step, steps=100, peak=1e-3) for step in range(100)]
    assert rates[0] == pytest.approx(2e-4) and rates[4] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3) and rates[-1] < 1e-6
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
