"""YOLOv4-tiny's [yolo] numbers, as Darknet's ``yolov4-tiny.cfg`` gives them.

The stock cfg (``search.models.yolov4_tiny.darknet.yolov4_tiny_cfg_text``) is written from these
and the layer table; everything else reads them back from that cfg, as it would from any other.
"""

from __future__ import annotations

# [yolo]: anchors in pixels of the network input (Darknet keeps them in pixels whatever the input
# size), and which anchors each head uses, coarse head (stride 32) first as the model outputs them.
ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
MASKS = ((3, 4, 5), (1, 2, 3))
STRIDES = (32, 16)
SCALE_X_Y = 1.05  # [yolo] scale_x_y: box centres may reach slightly past their cell
# [yolo] iou_thresh: a box is also assigned to every masked anchor this close in shape. yolov4.cfg's
# value; yolov4-tiny.cfg gives none (Darknet's default 1.0: the best anchor only), but the stock
# network has always trained with it here, so the built-in cfg states it.
IOU_THRESH = 0.213
IGNORE_THRESH = 0.7  # [yolo] ignore_thresh: predictions this close to a truth are no negatives
