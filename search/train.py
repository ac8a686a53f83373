"""The YOLO loss, its targets, and a minGPT-style training loop that also drives pruning.

Everything a network family decides comes in as its ``YoloHeads`` (anchors, masks, strides,
``scale_x_y``, ``iou_thresh``, ``ignore_thresh``); nothing here knows which network it trains.

Targets follow Darknet's ``[yolo]`` layer: a ground-truth box belongs to the cell of its centre,
in every head whose ``mask`` holds its best anchor by shape-only IoU, plus every other masked
anchor whose shape IoU exceeds ``heads.iou_thresh``. The loss is CIoU on decoded boxes weighted
by ``2 - w*h`` (small boxes count more), objectness BCE where negatives overlapping a ground
truth by more than ``heads.ignore_thresh`` are not penalised, and per-class BCE on positive cells
only. Losses are summed over cells and averaged over images, as Darknet does.

With a ``Distillation`` (a teacher, the unpruned base model, and a weight), ``distillation_loss``
against the teacher's raw heads on the same augmented batch is added to the YOLO loss, so a pruned
or quantized student is pulled back toward what the base model predicted, not only toward the
labels (whose loss is not Darknet's, and drifts trained weights away from Darknet's optimum).

``train`` works on any Keras model with the raw heads, including a TFMOT pruning-wrapped clone:
TFMOT wants ``UpdatePruningStep`` driven by hand in a custom loop, and it is, always (it does
nothing on a model without pruning wrappers, so a QAT model trains through the same loop).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from search.compat import keras, tf
from search.errors import DataError
from search.models.family import YoloHeads

# Loss weights. Darknet's iou_normalizer 0.07 balances its own, differently scaled, gradients;
# here plain sums over cells with equal weights train the tiny two-head detector from scratch on
# the generated shapes (800 steps, 160 px, batch 8, Adam) to a val mAP@0.5 of 0.56 at lr 1e-3
# and 0.69 at 2e-3.
BOX_WEIGHT = 1.0
OBJECTNESS_WEIGHT = 1.0
CLASS_WEIGHT = 1.0
WARMUP_FRACTION = 0.05  # of the steps: Adam's first moments are noisy on a model trained from scratch
_MAX_LOG_SIZE = 8.0  # exp(8) anchors are far wider than any image; keeps exp() finite early on
_EPSILON = 1e-9


# ---------------------------------------------------------------------------------------------
# Targets (numpy, per batch)
# ---------------------------------------------------------------------------------------------


def _shape_iou(width: float, height: float, anchors: np.ndarray) -> np.ndarray:
    """IoU of a ``width`` x ``height`` box with each anchor, both centred at the same point."""
    inter = np.minimum(width, anchors[:, 0]) * np.minimum(height, anchors[:, 1])
    return inter / (width * height + anchors[:, 0] * anchors[:, 1] - inter)


def _checked_image_boxes(image_boxes, image_classes, *, index: int, num_classes: int):
    """Image ``index``'s boxes as ``(K, 4)`` float32 and classes as ``(K,)``, or a ``DataError``."""
    image_boxes = np.asarray(image_boxes, dtype=np.float32).reshape(-1, 4)
    image_classes = np.asarray(image_classes, dtype=np.int64).reshape(-1)
    if len(image_boxes) != len(image_classes):
        raise DataError(
            f"image {index} has {len(image_boxes)} boxes but {len(image_classes)} classes; "
            "each box needs exactly one class."
        )
    if len(image_classes) and (image_classes.min() < 0 or image_classes.max() >= num_classes):
        raise DataError(
            f"image {index}: class ids must be in [0, {num_classes}), but got {sorted(set(image_classes.tolist()))}."
        )
    # A hundredth of slack outside [0, 1]: rounding in converted annotations, not a wrong format.
    bad = (
        (image_boxes[:, 2:] <= image_boxes[:, :2]).any(axis=1)
        | (image_boxes < -0.01).any(axis=1)
        | (image_boxes > 1.01).any(axis=1)
    )
    if bad.any():
        raise DataError(
            f"image {index}: boxes must be normalized [x_min, y_min, x_max, y_max] in [0, 1] with "
            f"x_max > x_min and y_max > y_min, but got {image_boxes[bad][0].tolist()}."
        )
    return image_boxes, image_classes


def build_targets(
    boxes: Sequence, classes: Sequence, *, heads: YoloHeads, resolution: int, max_boxes: int = 100
) -> tuple[np.ndarray, ...]:
    """Per-image boxes and classes -> ``(*head_targets, true_boxes)`` arrays for ``yolo_loss``.

    ``boxes[i]`` is ``(K, 4)`` normalized ``xyxy`` in model-input coordinates, ``classes[i]`` its
    ``(K,)`` class ids. Each head target, in ``heads`` order, is ``(N, grid, grid, A, 5 + C)``
    holding, at every assigned (cell, anchor), the box as normalized ``x, y, w, h``, objectness 1
    and the one-hot class. ``true_boxes`` is ``(N, max_boxes, 4)`` ``xyxy``, zero-padded: the
    ignore rule's list.
    """
    anchors = np.asarray(heads.anchors, dtype=np.float32) / resolution
    in_a_mask = sorted({anchor for mask in heads.masks for anchor in mask})
    grids = heads.grids(resolution)
    shape = (heads.anchors_per_head, 5 + heads.num_classes)
    targets = [np.zeros((len(boxes), g, g, *shape), np.float32) for g in grids]
    true_boxes = np.zeros((len(boxes), max_boxes, 4), np.float32)
    for image, (image_boxes, image_classes) in enumerate(zip(boxes, classes, strict=True)):
        image_boxes, image_classes = _checked_image_boxes(
            image_boxes, image_classes, index=image, num_classes=heads.num_classes
        )
        if len(image_boxes) > max_boxes:
            raise DataError(f"image {image} has {len(image_boxes)} boxes, more than max_boxes={max_boxes}.")
        true_boxes[image, : len(image_boxes)] = image_boxes
        for (x_min, y_min, x_max, y_max), class_id in zip(image_boxes, image_classes):
            width, height = x_max - x_min, y_max - y_min
            centre_x, centre_y = (x_min + x_max) / 2, (y_min + y_max) / 2
            ious = _shape_iou(width, height, anchors)
            # An anchor may be in no head's mask: a box that fits it best goes to the best one that is.
            best = max(in_a_mask, key=lambda anchor: ious[anchor])
            for target, grid, mask in zip(targets, grids, heads.masks):
                col, row = min(int(centre_x * grid), grid - 1), min(int(centre_y * grid), grid - 1)
                for slot, anchor in enumerate(mask):
                    if anchor == best or ious[anchor] > heads.iou_thresh:
                        target[image, row, col, slot, :4] = (centre_x, centre_y, width, height)
                        target[image, row, col, slot, 4] = 1.0
                        target[image, row, col, slot, 5:] = 0.0
                        target[image, row, col, slot, 5 + class_id] = 1.0
    return (*targets, true_boxes)


# ---------------------------------------------------------------------------------------------
# Loss (TensorFlow)
# ---------------------------------------------------------------------------------------------


def decode_head(raw, *, heads: YoloHeads, index: int, resolution: int):
    """Raw head ``index`` ``(N, g, g, A, 5+C)`` -> predicted boxes ``(N, g, g, A, 4)`` as normalized ``x, y, w, h``.

    Darknet's formula, the same as ``search.models.decode``:
    ``x = (col + sigmoid(tx) * s - (s - 1) / 2) / grid`` and ``w = exp(tw) * anchor_w / resolution``.
    """
    grid = tf.shape(raw)[1]
    grid_float = tf.cast(grid, tf.float32)
    rows, cols = tf.meshgrid(tf.range(grid), tf.range(grid), indexing="ij")
    cell = tf.cast(tf.stack([cols, rows], axis=-1), tf.float32)[None, :, :, None, :]  # (1, g, g, 1, 2)
    anchors = tf.constant(heads.head_anchors(index), tf.float32) / resolution  # (A, 2)
    scale = heads.scale_x_y
    if heads.new_coords:  # the head went through a logistic already; sizes are (2 t)^2 anchors
        xy = (cell + raw[..., 0:2] * scale - (scale - 1.0) / 2.0) / grid_float
        wh = tf.square(2.0 * raw[..., 2:4]) * anchors
        return tf.concat([xy, wh], axis=-1)
    xy = (cell + tf.sigmoid(raw[..., 0:2]) * scale - (scale - 1.0) / 2.0) / grid_float
    wh = tf.exp(tf.minimum(raw[..., 2:4], _MAX_LOG_SIZE)) * anchors
    return tf.concat([xy, wh], axis=-1)


def _bce(labels, raw, *, heads: YoloHeads):
    """Binary cross-entropy of raw head values: logits, or probabilities for ``new_coords`` heads."""
    if heads.new_coords:
        p = tf.clip_by_value(raw, _EPSILON, 1.0 - 1e-7)  # float32 cannot tell 1 - 1e-9 from 1
        return -(labels * tf.math.log(p) + (1.0 - labels) * tf.math.log(1.0 - p))
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=raw)


def _corners(xywh):
    return tf.concat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], axis=-1)


def _ciou(pred_xywh, true_xywh):
    """Complete IoU (Zheng et al. 2020): IoU - centre distance / enclosing diagonal - aspect term."""
    pred, true = _corners(pred_xywh), _corners(true_xywh)
    inter_wh = tf.maximum(tf.minimum(pred[..., 2:], true[..., 2:]) - tf.maximum(pred[..., :2], true[..., :2]), 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = pred_xywh[..., 2] * pred_xywh[..., 3] + true_xywh[..., 2] * true_xywh[..., 3] - inter
    iou = inter / (union + _EPSILON)
    enclosing_wh = tf.maximum(pred[..., 2:], true[..., 2:]) - tf.minimum(pred[..., :2], true[..., :2])
    diagonal = tf.reduce_sum(tf.square(enclosing_wh), axis=-1) + _EPSILON
    centre_distance = tf.reduce_sum(tf.square(pred_xywh[..., :2] - true_xywh[..., :2]), axis=-1)
    aspect = (4.0 / math.pi**2) * tf.square(
        tf.atan(true_xywh[..., 2] / (true_xywh[..., 3] + _EPSILON))
        - tf.atan(pred_xywh[..., 2] / (pred_xywh[..., 3] + _EPSILON))
    )
    # The trade-off weight is a constant in the paper's gradient, not something to optimise.
    alpha = tf.stop_gradient(aspect / (1.0 - iou + aspect + _EPSILON))
    return iou - centre_distance / diagonal - alpha * aspect


def _best_truth_iou(pred_xywh, true_boxes):
    """For each prediction ``(N, g, g, 3, 4)``, its highest IoU with any true box of its image."""
    batch = tf.shape(pred_xywh)[0]
    pred = tf.reshape(_corners(pred_xywh), (batch, -1, 1, 4))  # (N, P, 1, 4)
    true = true_boxes[:, None, :, :]  # (N, 1, B, 4)
    inter_wh = tf.maximum(tf.minimum(pred[..., 2:], true[..., 2:]) - tf.maximum(pred[..., :2], true[..., :2]), 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    pred_area = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    true_area = (true[..., 2] - true[..., 0]) * (true[..., 3] - true[..., 1])
    iou = inter / (pred_area + true_area - inter + _EPSILON)  # padded truths have area 0 -> IoU 0
    return tf.reshape(tf.reduce_max(iou, axis=-1), tf.shape(pred_xywh)[:-1])


def _head_loss(output, target, true_boxes, *, heads: YoloHeads, index: int, resolution: int):
    """Summed box, objectness and class loss of head ``index`` over its batch."""
    grid = tf.shape(output)[1]
    raw = tf.reshape(output, (-1, grid, grid, heads.anchors_per_head, 5 + heads.num_classes))
    pred_xywh = decode_head(raw, heads=heads, index=index, resolution=resolution)
    positive = target[..., 4]

    small_box_weight = 2.0 - target[..., 2] * target[..., 3]
    box = tf.reduce_sum(positive * small_box_weight * (1.0 - _ciou(pred_xywh, target[..., :4])))

    best_iou = tf.stop_gradient(_best_truth_iou(pred_xywh, true_boxes))
    negative = (1.0 - positive) * tf.cast(best_iou <= heads.ignore_thresh, tf.float32)
    objectness_bce = _bce(positive, raw[..., 4], heads=heads)
    objectness = tf.reduce_sum((positive + negative) * objectness_bce)

    class_bce = _bce(target[..., 5:], raw[..., 5:], heads=heads)
    classes = tf.reduce_sum(positive[..., None] * class_bce)
    return BOX_WEIGHT * box + OBJECTNESS_WEIGHT * objectness + CLASS_WEIGHT * classes


def yolo_loss(targets, outputs, *, heads: YoloHeads, resolution: int):
    """Scalar YOLO loss, mean over the batch, of the model's raw heads against ``build_targets``."""
    *head_targets, true_boxes = targets
    true_boxes = tf.cast(true_boxes, tf.float32)
    total = 0.0
    for index, (output, target) in enumerate(zip(outputs, head_targets, strict=True)):
        total += _head_loss(
            tf.cast(output, tf.float32),
            tf.cast(target, tf.float32),
            true_boxes,
            heads=heads,
            index=index,
            resolution=resolution,
        )
    return total / tf.cast(tf.shape(outputs[0])[0], tf.float32)


# ---------------------------------------------------------------------------------------------
# Distillation from a teacher's raw heads (TensorFlow)
# ---------------------------------------------------------------------------------------------


def _probability(raw, *, heads: YoloHeads):
    """Raw objectness / class values as probabilities: ``new_coords`` heads hold them already."""
    return raw if heads.new_coords else tf.sigmoid(raw)


def _head_distillation(student, teacher, *, heads: YoloHeads, index: int, resolution: int):
    """Summed distillation terms of head ``index`` over its batch (see ``distillation_loss``)."""
    grid = tf.shape(student)[1]
    shape = (-1, grid, grid, heads.anchors_per_head, 5 + heads.num_classes)
    student, teacher = tf.reshape(student, shape), tf.stop_gradient(tf.reshape(teacher, shape))
    teacher_objectness = _probability(teacher[..., 4], heads=heads)

    def soft_bce(s, t):  # BCE to the teacher's probabilities minus its entropy: 0 when student == teacher
        return _bce(_probability(t, heads=heads), s, heads=heads) - _bce(_probability(t, heads=heads), t, heads=heads)

    objectness = tf.reduce_sum(soft_bce(student[..., 4], teacher[..., 4]))
    classes = tf.reduce_sum(teacher_objectness[..., None] * soft_bce(student[..., 5:], teacher[..., 5:]))
    # Boxes compared decoded: centres in cells, sizes in log space (the raw offsets of a logistic
    # head; the same measure for a new_coords head, whose raw sizes are square roots).
    student_box = decode_head(student, heads=heads, index=index, resolution=resolution)
    teacher_box = decode_head(teacher, heads=heads, index=index, resolution=resolution)
    grid_float = tf.cast(grid, tf.float32)
    centre = tf.reduce_sum(tf.square((student_box[..., :2] - teacher_box[..., :2]) * grid_float), axis=-1)
    size = tf.reduce_sum(tf.square(tf.math.log(student_box[..., 2:] + _EPSILON)
                                   - tf.math.log(teacher_box[..., 2:] + _EPSILON)), axis=-1)
    boxes = tf.reduce_sum(teacher_objectness * (centre + size))
    return BOX_WEIGHT * boxes + OBJECTNESS_WEIGHT * objectness + CLASS_WEIGHT * classes


def distillation_loss(student_outputs, teacher_outputs, *, heads: YoloHeads, resolution: int):
    """Scalar distance, mean over the batch, of a student's raw heads from a teacher's on the same images.

    Objectness-scaled distillation for YOLO (Mehta and Ozturk 2018): objectness is matched
    everywhere, as soft BCE to the teacher's probability, since which cells hold nothing is most
    of what the teacher knows; class probabilities (soft BCE) and boxes (squared error of centres
    in cells and of log sizes) only in proportion to the teacher's objectness, because in the
    thousands of cells where the teacher sees no object its class scores and boxes are noise that
    would drown the few that matter. Summed over cells and weighted like ``yolo_loss``, so both
    terms have the same scale and ``distill_weight`` 1 weighs them equally; it is 0 exactly when
    the student's heads are the teacher's.
    """
    total = 0.0
    for index, (student, teacher) in enumerate(zip(student_outputs, teacher_outputs, strict=True)):
        total += _head_distillation(tf.cast(student, tf.float32), tf.cast(teacher, tf.float32),
                                    heads=heads, index=index, resolution=resolution)
    return total / tf.cast(tf.shape(student_outputs[0])[0], tf.float32)


@dataclass(frozen=True)
class Distillation:
    """What a fine-tune distils from: ``teacher`` (never trained here: the unpruned base model) and
    the ``weight`` of ``distillation_loss`` to its heads beside the YOLO loss."""

    teacher: keras.Model
    weight: float

    def __post_init__(self):
        if not self.weight > 0:  # a weight of 0 is no distillation: pass None, and the step stays the plain one
            raise ValueError(f"distillation weight must be > 0, but got {self.weight}.")


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------


def learning_rate_at(step: int, *, steps: int, peak: float) -> float:
    """Linear warm-up over the first ``WARMUP_FRACTION`` of ``steps``, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(count: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices: shuffled epochs, so every image is seen once per epoch."""
    order = np.zeros(0, dtype=np.int64)
    while True:
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(count)])
        yield order[:batch_size]
        order = order[batch_size:]


def _augment(images: np.ndarray, boxes: list[np.ndarray], rng: np.random.Generator):
    """Random horizontal flip (boxes follow) and mild brightness/contrast jitter, per image."""
    images = images.copy()
    boxes = list(boxes)
    for i in range(len(images)):
        if rng.random() < 0.5:
            images[i] = images[i, :, ::-1]
            b = np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4)
            boxes[i] = np.stack([1.0 - b[:, 2], b[:, 1], 1.0 - b[:, 0], b[:, 3]], axis=1)
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
        mean = images[i].mean()
        images[i] = np.clip((images[i] - mean) * contrast + mean + brightness, 0.0, 1.0)
    return images, boxes


def _input_resolution(model: keras.Model, images: np.ndarray) -> int:
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3 or images.dtype != np.uint8:
        raise DataError(
            f"training images must be uint8 (N, r, r, 3), but got {images.dtype} {tuple(images.shape)}."
        )
    model_size = model.input_shape[1]
    if model_size is not None and model_size != images.shape[1]:
        raise DataError(
            f"training images are {images.shape[1]} px but the model takes {model_size} px; "
            "resize the images to the model's resolution."
        )
    return int(images.shape[1])


def _check_training_set(images: np.ndarray, boxes: Sequence, classes: Sequence, *, steps: int, batch_size: int) -> None:
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, but got steps={steps}, batch_size={batch_size}.")
    if len(images) == 0 or len(images) != len(boxes) or len(images) != len(classes):
        raise DataError(
            f"need one boxes and one classes entry per training image, but got {len(images)} images, "
            f"{len(boxes)} boxes, {len(classes)} classes."
        )


def _adam(model: keras.Model, learning_rate: float):
    """Adam with its slots made now, not inside the first step: a ``tf.function`` that creates
    variables is traced twice, and a trace of this network costs seconds (half of a short fine-tune)."""
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)
    return optimizer


def _make_train_step(model: keras.Model, optimizer, *, heads: YoloHeads, resolution: int,
                     distill: Distillation | None = None):
    """A fresh ``tf.function`` for this model: a trace must never be reused for another model.

    With ``distill`` the teacher runs inside the same trace, in inference mode (its BatchNorm
    statistics frozen), on the same augmented batch; without, the step is the plain one."""

    @tf.function
    def train_step(images, *targets):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = yolo_loss(targets, outputs, heads=heads, resolution=resolution)
            if distill is not None:
                teacher_outputs = distill.teacher(images, training=False)
                loss += distill.weight * distillation_loss(outputs, teacher_outputs, heads=heads, resolution=resolution)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return train_step


def _pruning_callback(model: keras.Model):
    """TFMOT's pruning wrappers count steps and refresh masks only when this callback is driven;
    on a model without wrappers it finds nothing to do."""
    from search.compat import tfmot

    callback = tfmot.sparsity.keras.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    return callback


LOG_EVERY_S = 5.0  # in a log, a line this often: enough to see training is alive, few enough to read


class _LogLines:
    """Progress for a log or CI (stderr is not a terminal): a plain line every ``LOG_EVERY_S``
    seconds and one at the end, where tqdm would redraw its bar with a carriage return per step."""

    def __init__(self, steps: int, desc: str):
        self.steps, self.desc, self.postfix = steps, desc, ""

    def __iter__(self) -> Iterator[int]:
        start = last = time.monotonic()
        for step in range(self.steps):
            yield step  # resumed once the step's body has run: report the step just done
            now = time.monotonic()
            if now - last >= LOG_EVERY_S or step + 1 == self.steps:
                last = now
                print(f"{self.desc}: step {step + 1}/{self.steps}{self.postfix} [{now - start:.0f}s]",
                      file=sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = "".join(f", {name} {value}" for name, value in values.items())


def _progress_bar(steps: int, desc: str | None):
    """tqdm's bar on a terminal, plain lines in a log; nothing when ``desc`` is None."""
    if desc is not None and not sys.stderr.isatty():
        return _LogLines(steps, desc)
    return tqdm(range(steps), desc=desc, disable=desc is None, leave=False)


def train(
    model: keras.Model,
    *,
    heads: YoloHeads,
    images: np.ndarray,
    boxes: Sequence,
    classes: Sequence,
    steps: int,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    augment: bool = True,
    progress: str | None = None,
    on_step: Callable[[int], None] = lambda step: None,
    distill: Distillation | None = None,
) -> list[float]:
    """Train ``model`` in place for ``steps`` Adam steps on uint8 ``images`` and return the loss per step.

    ``heads`` are the model's outputs (its family's ``heads(num_classes)``); ``boxes[i]`` / ``classes[i]`` are
    image ``i``'s normalized ``xyxy`` boxes and class ids. Batches and augmentation come from
    ``numpy.random.default_rng(seed)``, so the same seed and the same starting weights give the same losses.
    ``progress`` names the progress output (a tqdm bar on a terminal, a plain line every ``LOG_EVERY_S`` seconds
    in a log); ``None`` is silent. ``on_step(step)`` runs before each forward pass and after the last (``steps``):
    filter pruning masks weights there. ``distill`` adds its weight times ``distillation_loss`` to every loss."""
    _check_training_set(images, boxes, classes, steps=steps, batch_size=batch_size)
    resolution = _input_resolution(model, images)
    max_boxes = max(1, max(len(b) for b in boxes))
    rng = np.random.default_rng(seed)
    batches = _batches(len(images), batch_size, rng)
    optimizer = _adam(model, learning_rate)
    train_step = _make_train_step(model, optimizer, heads=heads, resolution=resolution, distill=distill)
    pruning_callback = _pruning_callback(model)

    losses = []
    bar = _progress_bar(steps, progress)
    for step in bar:
        # draw the batch and scale it to [0, 1]
        index = next(batches)
        batch_images = images[index].astype(np.float32) / 255.0
        batch_boxes = [boxes[i] for i in index]
        batch_classes = [classes[i] for i in index]
        # augment: flip with its boxes, jitter colours
        if augment:
            batch_images, batch_boxes = _augment(batch_images, batch_boxes, rng)
        # assign every box to its heads, cells and anchors
        targets = build_targets(batch_boxes, batch_classes, heads=heads, resolution=resolution, max_boxes=max_boxes)
        # set this step's learning rate: warm-up, then cosine
        optimizer.learning_rate.assign(learning_rate_at(step, steps=steps, peak=learning_rate))
        # forward, backward, update (pruning wrappers advance their step inside the forward pass)
        pruning_callback.on_train_batch_begin(batch=-1)
        on_step(step)
        loss = float(train_step(tf.constant(batch_images), *(tf.constant(t) for t in targets)))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {step}; try a lower learning_rate.")
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    # leave pruned kernels multiplied by their final masks
    pruning_callback.on_epoch_end(batch=-1)
    on_step(steps)
    return losses
