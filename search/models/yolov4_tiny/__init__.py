"""YOLOv4-tiny: the builder, Darknet import/export, its cfg's numbers, and its registry row."""

from search.models.yolov4_tiny.family import FAMILY

__all__ = ["FAMILY"]
