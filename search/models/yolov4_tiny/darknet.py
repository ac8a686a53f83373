"""YOLOv4-tiny's cfg, written from its layer table, and the Darknet file functions at its layout.

``yolov4_tiny_cfg_text`` is the built-in cfg the family builds by default (``FAMILY``); the file
functions are the generic ones of ``search.models.darknet`` applied to it. Nothing here imports
TensorFlow until a model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from search.models.darknet.cfg import parse_cfg as _parse_cfg
from search.models.darknet.cfg import parse_cfg_text
from search.models.darknet.family import _check_files, _load_pretrained
from search.models.darknet.network import read_network, with_classes
from search.models.darknet.weights import conv_layer_indices, model_float_count, save_darknet_weights
from search.models.yolov4_tiny.constants import ANCHORS, IGNORE_THRESH, IOU_THRESH, MASKS, SCALE_X_Y

if TYPE_CHECKING:
    from search.compat import keras

__all__ = [
    "YOLOV4_TINY_LAYERS", "check_darknet_files", "conv_layer_indices", "darknet_float_count", "load_darknet_model",
    "load_darknet_weights", "model_float_count", "parse_cfg", "save_darknet_weights", "stock_cfg",
    "yolov4_tiny_cfg_text",
]

BUILT_IN = "yolov4-tiny.cfg (built in)"  # how errors name the stock cfg

# The two head convolutions: their filters follow the class count.
_CONV_HEAD = {"size": "1", "stride": "1", "pad": "1", "activation": "linear"}


def _conv(filters: int, size: int, stride: int = 1) -> tuple[str, dict]:
    settings = {"filters": str(filters), "size": str(size), "stride": str(stride), "pad": "1", "activation": "leaky"}
    return "convolutional", {"batch_normalize": "1", **settings}


def _route(layers: str, groups: bool = False) -> tuple[str, dict]:
    return "route", {"layers": layers, **({"groups": "2", "group_id": "1"} if groups else {})}


def _csp(filters: int) -> list[tuple[str, dict]]:
    return [
        _conv(filters, 3),
        _route("-1", groups=True),
        _conv(filters // 2, 3),
        _conv(filters // 2, 3),
        _route("-1,-2"),
        _conv(filters, 1),
        _route("-6,-1"),
        ("maxpool", {"size": "2", "stride": "2"}),
    ]


# YOLOv4-tiny's layer sequence after [net], one row per Darknet layer. `None` marks what depends on
# the class count: the head convolutions and [yolo].
_HEAD = ("convolutional", None)
_YOLO = ("yolo", None)
YOLOV4_TINY_LAYERS: tuple[tuple[str, dict | None], ...] = (
    _conv(32, 3, 2),
    _conv(64, 3, 2),
    *_csp(64),
    *_csp(128),
    *_csp(256),
    _conv(512, 3),
    _conv(256, 1),
    _conv(512, 3),
    _HEAD,
    _YOLO,
    _route("-4"),
    _conv(128, 1),
    ("upsample", {"stride": "2"}),
    _route("-1,23"),
    _conv(256, 3),
    _HEAD,
    _YOLO,
)


def yolov4_tiny_cfg_text(*, num_classes: int, resolution: int = 416) -> str:
    """The text of a YOLOv4-tiny cfg at ``num_classes`` (inference settings, and the two [yolo]
    training thresholds the search's loss reads), which Darknet and OpenCV read too."""
    anchors = ",".join(f"{w},{h}" for w, h in ANCHORS)  # as Cfg.text() writes it: the text reads back the same
    sections = [("net", {"batch": 1, "subdivisions": 1, "width": resolution, "height": resolution, "channels": 3})]
    masks = iter(MASKS)
    for kind, settings in YOLOV4_TINY_LAYERS:
        if kind == "yolo":
            mask = ",".join(str(a) for a in next(masks))
            settings = {"mask": mask, "anchors": anchors, "classes": num_classes, "num": len(ANCHORS),
                        "scale_x_y": SCALE_X_Y, "iou_thresh": IOU_THRESH, "ignore_thresh": IGNORE_THRESH}
        elif settings is None:
            settings = {"filters": len(MASKS[0]) * (num_classes + 5), **_CONV_HEAD}
        sections.append((kind, settings))
    return "\n".join(
        "\n".join([f"[{kind}]", *(f"{key}={value}" for key, value in settings.items()), ""]) for kind, settings in sections
    )


def stock_cfg(*, num_classes: int = 80, resolution: int = 416):
    """The built-in cfg as a ``search.models.darknet.cfg.Cfg``."""
    return parse_cfg_text(yolov4_tiny_cfg_text(num_classes=num_classes, resolution=resolution), source=BUILT_IN)


def parse_cfg(path) -> list[dict]:
    """A cfg file's sections, ``[net]`` first, as ``{"type": kind, "line": n, key: value, ...}`` dicts."""
    cfg = _parse_cfg(path)
    return [{"type": s.kind, "line": s.line, **s.options} for s in (cfg.net, *cfg.layers)]


def darknet_float_count(*, num_classes: int) -> int:
    """float32 values after the header of a YOLOv4-tiny ``.weights`` file: 6,062,814 at 80 classes."""
    return read_network(stock_cfg(num_classes=num_classes)).float_count


def load_darknet_weights(model: keras.Model, weights_path) -> None:
    """Assign a Darknet ``.weights`` file to a stock ``model`` in place (``search.models.darknet.weights``)."""
    from search.models.darknet.weights import load_darknet_weights as load

    num_classes = int(model.outputs[0].shape[-1]) // len(MASKS[0]) - 5
    network = read_network(with_classes(stock_cfg(), num_classes))
    load(model, weights_path, network=network, label=model.name)


def check_darknet_files(cfg_path, weights_path) -> int:
    """Check any family cfg and its weights without building a model; return the cfg's class count."""
    return _check_files(Path(cfg_path), Path(weights_path))


def load_darknet_model(cfg_path, weights_path, *, resolution: int | None):
    """``(model, num_classes)``: the cfg built at ``resolution`` with the weights file loaded."""
    return _load_pretrained(cfg_path, weights_path, resolution=resolution)
