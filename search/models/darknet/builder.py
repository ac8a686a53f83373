"""A checked Darknet network (``search.models.darknet.network``) as a Keras 2 (``tf_keras``) model.

Darknet layer ``i`` becomes Keras layers named after it: ``conv_{i}`` (``DepthwiseConv2D`` when
every input channel is its own group), ``bn_{i}`` for ``batch_normalize=1``, the activation
(``leaky_{i}``, ``logistic_{i}``, ``relu_{i}``, ``swish_{i}``, ``mish_{i}``; none for linear),
``pad_{i}`` where Darknet's padding is not TensorFlow's "same", ``maxpool_{i}``, ``route_{i}``
(a ``Concatenate``, or a ``Lambda`` taking a group of channels; a route of one whole layer is no
layer at all), ``shortcut_{i}`` and ``upsample_{i}``. A Darknet ``.weights`` file maps onto the
convs by these names (``search.models.darknet.weights``), and the quantization report names the
layers so.

Input: ``(resolution, resolution, 3)`` RGB in ``[0, 1]`` (``None``: any size). Outputs: the input
of each ``[yolo]`` layer, in cfg order: ``(N, r/stride, r/stride, anchors * (5 + classes))``.
Decoding happens outside the graph (``search.models.decode``), so quantization applies to the
network only.
"""

from __future__ import annotations

from search.compat import keras
from search.models.darknet.network import IMAGE, Conv, Layer, MaxPool, Network, Route, Shortcut, Upsample, Yolo

LEAKY_ALPHA = 0.1  # Darknet's "leaky"
BN_EPSILON = 1e-5  # Darknet divides by sqrt(var + .00001)
BN_MOMENTUM = 0.99  # Keras' default: what fine-tuning the stock model has always used


def _activate(x, activation: str, index: int):
    if activation == "linear":
        return x
    if activation == "leaky":
        return keras.layers.LeakyReLU(alpha=LEAKY_ALPHA, name=f"leaky_{index}")(x)
    if activation == "relu":
        return keras.layers.ReLU(name=f"relu_{index}")(x)
    keras_name = {"logistic": "sigmoid", "swish": "swish", "mish": "mish"}[activation]
    return keras.layers.Activation(keras_name, name=f"{activation}_{index}")(x)


def _conv(layer: Layer, x, in_channels: int):
    op: Conv = layer.op
    i, padding = layer.index, "same"
    if op.padding is not None:
        padding = "valid"
        before, after = op.padding
        if before or after:
            # Darknet pads the top/left by `pad` and reads only what it needs below/right; "same"
            # would pad the other way at stride 2 and shift every feature by a pixel.
            x = keras.layers.ZeroPadding2D(((before, after), (before, after)), name=f"pad_{i}")(x)
    common = dict(strides=op.stride, padding=padding, use_bias=not op.batch_normalize, name=f"conv_{i}")
    if op.groups > 1 and op.groups == in_channels:
        x = keras.layers.DepthwiseConv2D(op.size, depth_multiplier=op.filters // op.groups, **common)(x)
    else:
        x = keras.layers.Conv2D(op.filters, op.size, groups=op.groups, **common)(x)
    if op.batch_normalize:
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"bn_{i}")(x)
    return _activate(x, op.activation, i)


def _channel_group(x, *, groups: int, group_id: int, name: str):
    """Darknet's ``groups``/``group_id``: the ``group_id``-th of ``groups`` equal runs of channels."""
    channels = x.shape[-1]
    start = channels * group_id // groups
    if group_id == groups - 1:  # the last group reads to the end (as the stock network always has)
        return keras.layers.Lambda(lambda t: t[..., start:], name=name)(x)
    end = channels * (group_id + 1) // groups
    return keras.layers.Lambda(lambda t: t[..., start:end], name=name)(x)


def _route(layer: Layer, inputs: list):
    op: Route = layer.op
    name = f"route_{layer.index}"
    if op.groups > 1:  # of one layer (read_network refuses a group of several)
        return _channel_group(inputs[0], groups=op.groups, group_id=op.group_id, name=name)
    if len(inputs) == 1:
        return inputs[0]  # one whole layer: nothing to compute
    return keras.layers.Concatenate(name=name)(inputs)


def _layer(layer: Layer, inputs: list, in_channels: int):
    op, i = layer.op, layer.index
    if isinstance(op, Conv):
        return _conv(layer, inputs[0], in_channels)
    if isinstance(op, MaxPool):
        return keras.layers.MaxPooling2D(op.size, op.stride, padding="same", name=f"maxpool_{i}")(inputs[0])
    if isinstance(op, Route):
        return _route(layer, inputs)
    if isinstance(op, Shortcut):
        return _activate(keras.layers.Add(name=f"shortcut_{i}")(inputs), op.activation, i)
    if isinstance(op, Upsample):
        return keras.layers.UpSampling2D(op.stride, interpolation="nearest", name=f"upsample_{i}")(inputs[0])
    if isinstance(op, Yolo):
        return inputs[0]  # the head: decoded outside the graph
    raise TypeError(f"no Keras layer for {type(op).__name__}")


def build_model(network: Network, *, resolution: int | None, name: str) -> keras.Model:
    """``network`` at ``resolution`` (``None``: any size) with random weights, named ``name``.

    Raises ``ValueError`` for a resolution that is not a positive multiple of the network's largest stride.
    """
    network.check_resolution(resolution)
    inputs = keras.Input((resolution, resolution, 3), name="image")
    tensors = {IMAGE: inputs}
    for layer in network.layers:
        tensors[layer.index] = _layer(layer, [tensors[i] for i in layer.inputs], network.input_channels(layer))
    return keras.Model(inputs, [tensors[yolo.index] for yolo in network.of(Yolo)], name=name)
