"""YOLOv4-tiny's numbers from Darknet's ``yolov4-tiny.cfg`` that code outside the builder needs.

TensorFlow-free: the family's row (``search.models.yolov4_tiny.family``) is read by the space
validator. The cfg's layer table itself is in ``search.models.yolov4_tiny.darknet``.
"""

from __future__ import annotations

# [yolo]: anchors in pixels of the network input (Darknet keeps them in pixels whatever the input
# size), and which anchors each head uses, coarse head (stride 32) first as the model outputs them.
ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
MASKS = ((3, 4, 5), (1, 2, 3))
STRIDES = (32, 16)
SCALE_X_Y = 1.05  # [yolo] scale_x_y: box centres may reach slightly past their cell
IOU_THRESH = 0.213  # [yolo] iou_thresh: extra anchors a box is also assigned to
IGNORE_THRESH = 0.7  # [yolo] ignore_thresh: predictions this close to a truth are no negatives

# Darknet layer indices (the builder names layers after them: conv_29, route_3, ...).
HEAD_CONVS = (29, 36)  # the 1x1 convs before each [yolo]: their channels are the outputs
SPLIT_ROUTES = (3, 11, 19)  # [route] groups=2 group_id=1: the CSP blocks' channel split
