"""YOLOv4-tiny's row in the registry (``FAMILY``): its cfg's numbers and its modules behind the contract.

Every function imports the builder (TensorFlow) or the Darknet code when it is called, never at
import: the registry is read by the space validator, which must not start TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.models.family import ModelFamily, YoloHeads
from search.models.yolov4_tiny.constants import (
    ANCHORS,
    HEAD_CONVS,
    IGNORE_THRESH,
    IOU_THRESH,
    MASKS,
    SCALE_X_Y,
    SPLIT_ROUTES,
    STRIDES,
)

NAME = "yolov4_tiny"
# The [net] size an architecture's cfg states for a model built at any size: Darknet's default.
# Only informative: from_architecture builds at the resolution it is given.
_ANY_SIZE_CFG_RESOLUTION = 416
_ARCHITECTURE_SOURCE = "the architecture's cfg"


def heads(num_classes: int) -> YoloHeads:
    """The two [yolo] heads at ``num_classes``: coarse (stride 32) first, as the model outputs them."""
    return YoloHeads(
        anchors=ANCHORS, masks=MASKS, strides=STRIDES, scale_x_y=SCALE_X_Y, num_classes=num_classes,
        iou_thresh=IOU_THRESH, ignore_thresh=IGNORE_THRESH,
    )


def build(*, num_classes: int, resolution: int | None):
    from search.models.yolov4_tiny.builder import build_yolov4_tiny

    return build_yolov4_tiny(num_classes=num_classes, resolution=resolution)


def dense_layers(model) -> tuple[str, ...]:
    """The 1x1 convs before each [yolo]: about 0.3% of the weights, and each output channel is
    directly a box coordinate, objectness or class logit, so zeros there cost accuracy and buy no size."""
    return tuple(f"conv_{i}" for i in HEAD_CONVS)


def channel_split_layers(model) -> tuple[str, ...]:
    """The CSP blocks' ``[route] groups=2 group_id=1`` (a Lambda in the builder)."""
    return tuple(f"route_{i}" for i in SPLIT_ROUTES)


def _num_classes(model) -> int:
    return int(model.outputs[0].shape[-1]) // len(MASKS[0]) - 5


def architecture(model) -> dict[str, Any]:
    """``{"family", "num_classes", "cfg"}``: the Darknet cfg text that rebuilds ``model``.

    Raises ``ValueError`` for a model whose convolutions are not the cfg's (a thinned network):
    the builder makes the official widths only, so no architecture could rebuild it.
    """
    from search.models.yolov4_tiny.darknet import darknet_float_count, model_float_count, yolov4_tiny_cfg_text

    num_classes = _num_classes(model)
    found, official = model_float_count(model), darknet_float_count(num_classes=num_classes)
    if found != official:
        raise ValueError(
            f"architecture: model {model.name!r} must have yolov4-tiny.cfg's convolutions ({official:,} weights at "
            f"{num_classes} classes), but has {found:,}; a thinned YOLOv4-tiny cannot be rebuilt yet."
        )
    resolution = model.input_shape[1] or _ANY_SIZE_CFG_RESOLUTION
    cfg = yolov4_tiny_cfg_text(num_classes=num_classes, resolution=resolution)
    return {"family": NAME, "num_classes": num_classes, "cfg": cfg}


def from_architecture(architecture: Mapping[str, Any], *, resolution: int | None):
    """The model ``architecture`` describes, built at ``resolution`` with random weights."""
    from search.models.yolov4_tiny.builder import build_yolov4_tiny
    from search.models.yolov4_tiny.darknet import check_yolov4_tiny_cfg, parse_cfg_text

    if architecture.get("family") != NAME:
        raise ValueError(f"architecture family must be {NAME!r}, but got {architecture.get('family')!r}.")
    sections = parse_cfg_text(str(architecture.get("cfg", "")), source=_ARCHITECTURE_SOURCE)
    num_classes, _ = check_yolov4_tiny_cfg(sections, _ARCHITECTURE_SOURCE)
    if num_classes != architecture.get("num_classes"):
        raise ValueError(
            f"architecture num_classes must be its cfg's {num_classes}, but got {architecture.get('num_classes')!r}."
        )
    return build_yolov4_tiny(num_classes=num_classes, resolution=resolution)


def card(num_classes: int) -> dict[str, Any]:
    return heads(num_classes).card()


def check_files(cfg_path, weights_path) -> int:
    from search.models.yolov4_tiny.darknet import check_darknet_files

    return check_darknet_files(cfg_path, weights_path)


def load_pretrained(cfg_path, weights_path, *, resolution: int | None):
    from search.models.yolov4_tiny.darknet import load_darknet_model

    return load_darknet_model(cfg_path, weights_path, resolution=resolution)


FAMILY = ModelFamily(
    name=NAME,
    display_name="YOLOv4-tiny (Darknet yolov4-tiny.cfg)",
    description="YOLOv4-tiny as Darknet's yolov4-tiny.cfg: CSP backbone, two YOLO heads (strides 32, 16); "
    "imports Darknet .cfg/.weights",
    build=build,
    heads=heads,
    dense_layers=dense_layers,
    channel_split_layers=channel_split_layers,
    architecture=architecture,
    from_architecture=from_architecture,
    card=card,
    check_files=check_files,
    load_pretrained=load_pretrained,
)
