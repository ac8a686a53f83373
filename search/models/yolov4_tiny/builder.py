"""YOLOv4-tiny in Keras 2 (``tf_keras``): the built-in ``yolov4-tiny.cfg`` through the Darknet builder.

Every Darknet convolution ``i`` is a Keras ``Conv2D`` named ``conv_{i}`` (plus ``bn_{i}`` when the
cfg has ``batch_normalize=1``; see ``search.models.darknet.builder``). At 80 classes the model has
6,062,814 parameters, exactly the number of floats in the official weights file. Outputs: the two
raw YOLO heads, coarse first, as Darknet orders them: ``[(N, r/32, r/32, 3*(5+C)), (N, r/16,
r/16, 3*(5+C))]``.
"""

from __future__ import annotations

from search.models.yolov4_tiny.constants import MASKS


def head_channels(num_classes: int) -> int:
    """Channels of each YOLO head: three anchors of (4 box + 1 objectness + classes)."""
    return len(MASKS[0]) * (5 + num_classes)


def build_yolov4_tiny(*, num_classes: int, resolution: int | None = 416):
    """YOLOv4-tiny for ``num_classes`` classes at ``resolution`` pixels (or ``None``: any).

    Raises ``ValueError`` for a resolution that is not a positive multiple of 32 or a
    ``num_classes`` below 1.
    """
    from search.models.yolov4_tiny.family import FAMILY

    return FAMILY.build(num_classes=num_classes, resolution=resolution)
