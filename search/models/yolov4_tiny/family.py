"""YOLOv4-tiny's row in the registry (``FAMILY``): the Darknet-cfg family, built-in cfg by default.

A space's ``model.cfg`` swaps the built-in cfg for any cfg of the family (``yolov4-tiny-3l``,
``yolov4-tiny-custom``, ``yolov3-tiny``, ``yolov7-tiny``, widths or class counts of one's own):
``FAMILY.with_cfg(path)``. TensorFlow-free at import: the registry is read by the space validator.
"""

from __future__ import annotations

from search.models.darknet.family import darknet_family
from search.models.yolov4_tiny.darknet import stock_cfg

NAME = "yolov4_tiny"

FAMILY = darknet_family(
    stock_cfg(),
    name=NAME,
    display_name="YOLOv4-tiny (Darknet yolov4-tiny.cfg)",
    description="YOLOv4-tiny as Darknet's yolov4-tiny.cfg: CSP backbone, two YOLO heads (strides 32, 16); "
    "model.cfg builds any cfg of the family instead; imports Darknet .cfg/.weights",
    keras_name=NAME,
)
