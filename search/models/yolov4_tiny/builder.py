"""YOLOv4-tiny in Keras 2 (``tf_keras``), layer for layer as Darknet's ``yolov4-tiny.cfg``.

Every Darknet convolution ``i`` becomes a Keras ``Conv2D`` named ``conv_{i}`` (plus
``bn_{i}`` when the cfg has ``batch_normalize=1``), so a Darknet ``.weights`` file maps onto the
model by name (see ``search.models.yolov4_tiny.darknet``). At 80 classes the model has 6,062,814
parameters, exactly the number of floats in the official weights file.

Input: ``(resolution, resolution, 3)`` RGB in ``[0, 1]``; ``resolution`` a multiple of 32, or
``None`` for any size. Output: the two raw YOLO head tensors, coarse first, as Darknet orders
them: ``[(N, r/32, r/32, 3*(5+C)), (N, r/16, r/16, 3*(5+C))]``, each anchor's channels being
``tx, ty, tw, th, objectness, class_0 .. class_{C-1}`` before any activation. Decoding (sigmoid,
anchors, NMS) happens outside the graph (``search.models.decode``) so that quantization applies to
the convolutions only.
"""

from __future__ import annotations

from search.compat import keras
from search.models.yolov4_tiny.constants import HEAD_CONVS, MASKS

LEAKY_ALPHA = 0.1  # Darknet's "leaky" activation
BN_EPSILON = 1e-5  # Darknet divides by sqrt(var + .00001)


def _conv(x, index: int, filters: int, size: int, stride: int = 1, *, bn: bool = True):
    """Darknet ``[convolutional]`` number ``index``: pad=1 conv, then BN + leaky, or bias + linear."""
    if stride == 2:
        # Darknet pads (size-1)/2 on top/left and reads no further than it needs; Keras "same"
        # would pad bottom/right instead and shift every feature by a pixel.
        x = keras.layers.ZeroPadding2D(((1, 0), (1, 0)), name=f"pad_{index}")(x)
        padding = "valid"
    else:
        padding = "same"
    x = keras.layers.Conv2D(
        filters, size, strides=stride, padding=padding, use_bias=not bn, name=f"conv_{index}"
    )(x)
    if not bn:
        return x
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"bn_{index}")(x)
    return keras.layers.LeakyReLU(alpha=LEAKY_ALPHA, name=f"leaky_{index}")(x)


def _second_half(x, name: str):
    """Darknet ``[route] groups=2 group_id=1``: the second half of the channels."""
    channels = x.shape[-1]
    return keras.layers.Lambda(lambda t: t[..., channels // 2 :], name=name)(x)


def _csp_block(x, first: int, filters: int):
    """Layers ``first`` .. ``first+7`` of the backbone: conv, split, two convs, concat, 1x1, concat, pool.

    Returns ``(pooled, route)``: the block's output after max-pooling, and the 1x1 conv output
    that the second head routes from (layer 23 in the cfg).
    """
    c0 = _conv(x, first, filters, 3)
    half = _second_half(c0, f"route_{first + 1}")
    c1 = _conv(half, first + 2, filters // 2, 3)
    c2 = _conv(c1, first + 3, filters // 2, 3)
    cat = keras.layers.Concatenate(name=f"route_{first + 4}")([c2, c1])
    c3 = _conv(cat, first + 5, filters, 1)
    out = keras.layers.Concatenate(name=f"route_{first + 6}")([c0, c3])
    pooled = keras.layers.MaxPooling2D(2, 2, padding="same", name=f"maxpool_{first + 7}")(out)
    return pooled, c3


def head_channels(num_classes: int) -> int:
    """Channels of each YOLO head: three anchors of (4 box + 1 objectness + classes)."""
    return len(MASKS[0]) * (5 + num_classes)


def build_yolov4_tiny(*, num_classes: int, resolution: int | None = 416) -> keras.Model:
    """Build YOLOv4-tiny for ``num_classes`` classes at ``resolution`` pixels (or ``None``: any).

    Raises ``ValueError`` for a resolution that is not a positive multiple of 32 or a
    ``num_classes`` below 1.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, but got {num_classes}.")
    if resolution is not None and (resolution <= 0 or resolution % 32):
        raise ValueError(f"resolution must be a positive multiple of 32, but got {resolution}.")
    out_channels = head_channels(num_classes)

    inputs = keras.Input((resolution, resolution, 3), name="image")
    x = _conv(inputs, 0, 32, 3, 2)
    x = _conv(x, 1, 64, 3, 2)
    x, _ = _csp_block(x, 2, 64)  # layers 2..9
    x, _ = _csp_block(x, 10, 128)  # layers 10..17
    x, route_23 = _csp_block(x, 18, 256)  # layers 18..25; layer 23 feeds the second head
    x = _conv(x, 26, 512, 3)
    neck = _conv(x, 27, 256, 1)
    x = _conv(neck, 28, 512, 3)
    coarse = _conv(x, HEAD_CONVS[0], out_channels, 1, bn=False)  # -> [yolo] 30, stride 32

    x = _conv(neck, 32, 128, 1)  # [route] 31 = layer 27
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name="upsample_33")(x)
    x = keras.layers.Concatenate(name="route_34")([x, route_23])
    x = _conv(x, 35, 256, 3)
    fine = _conv(x, HEAD_CONVS[1], out_channels, 1, bn=False)  # -> [yolo] 37, stride 16

    return keras.Model(inputs, [coarse, fine], name="yolov4_tiny")
