"""Multiply-accumulates of one forward pass: a cost that needs no timing, so it never varies.

Latency depends on the machine, the threads and whoever else computes meanwhile; the MAC count
depends only on the architecture and the input resolution, so it ranks trials the same way on any
node and in any run. It is what the dense kernels pay, so it ignores sparsity (TFLite's CPU
kernels compute zeroed weights all the same) and quantization (an int8 MAC is still a MAC).

Counted: ``Conv2D`` (``H_out * W_out * K_h * K_w * C_in / groups * C_out``), ``DepthwiseConv2D``
and ``Dense``. Not counted: batch norm (folded into the preceding convolution's weights and bias
when the model is converted), biases, activations, pooling, concatenation, up-sampling and
padding: none of them multiply-accumulates, and together they are well under 1% of the stock
network's work. Darknet counts the convolutions the same way, as FLOPs = 2 x MACs: ``count_macs`` gives
3,453,938,176 MACs for the stock network (``search.models``) at 416 (80 classes), i.e. 6.908 BFLOPs; Darknet prints 6.910
because its total also adds the three max-pools' comparisons (0.002 BFLOPs). Decoding and NMS run
outside the model and are not counted.
"""

from __future__ import annotations

import math
from typing import Any

from search.objectives.objective import Artifact, MeasureContext, Measurement

__all__ = ["count_macs"]


def _shape(shape) -> tuple[int, ...]:
    """A layer's single input or output shape, without the batch axis, as plain ints."""
    if isinstance(shape, list):  # several inputs: only the counted layers matter, and they have one
        raise ValueError(f"expected one tensor shape, but got {len(shape)}: {shape}.")
    return tuple(int(d) if d is not None else -1 for d in tuple(shape)[1:])


def _conv2d_macs(layer, input_shape, output_shape) -> int:
    *_, c_in = _shape(input_shape)
    h_out, w_out, c_out = _shape(output_shape)
    k_h, k_w = layer.kernel_size
    groups = getattr(layer, "groups", 1)
    return h_out * w_out * k_h * k_w * (c_in // groups) * c_out


def _depthwise_macs(layer, input_shape, output_shape) -> int:
    h_out, w_out, c_out = _shape(output_shape)  # c_out = c_in * depth_multiplier
    k_h, k_w = layer.kernel_size
    return h_out * w_out * k_h * k_w * c_out


def _dense_macs(layer, input_shape, output_shape) -> int:
    *positions, units_in = _shape(input_shape)  # Dense on (N, ..., C) applies once per position
    return math.prod(positions) * units_in * layer.units


def _counters():
    from search.compat import keras  # here: importing this module must not start TensorFlow

    # One row per layer type that multiply-accumulates. DepthwiseConv2D subclasses Conv2D in
    # tf_keras, so it comes first: the first matching row counts a layer.
    return (
        (keras.layers.DepthwiseConv2D, _depthwise_macs),
        (keras.layers.Conv2D, _conv2d_macs),
        (keras.layers.Dense, _dense_macs),
    )


def _layer_macs(layer, counters) -> int:
    inner = getattr(layer, "layer", layer)  # a TFMOT pruning wrapper computes what its layer does
    if hasattr(inner, "layers") and not hasattr(layer, "layer"):  # a nested model
        return sum(_layer_macs(sub, counters) for sub in inner.layers)
    for layer_type, macs in counters:
        if isinstance(inner, layer_type):
            input_shape, output_shape = layer.input_shape, layer.output_shape
            if any(d < 0 for d in _shape(input_shape) + _shape(output_shape)):
                raise ValueError(
                    f"layer {layer.name!r} has an unknown size {output_shape}: count_macs needs a model "
                    "built at a fixed resolution."
                )
            return macs(inner, input_shape, output_shape)
    return 0


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass of the Keras ``model`` on one image at its input size.

    Reads layer shapes only (no TensorFlow computation), so it is instant and exact. Raises
    ``ValueError`` when the model was built with an unknown input size (``resolution=None``).
    """
    counters = _counters()
    return sum(_layer_macs(layer, counters) for layer in model.layers)


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    return {"macs": count_macs(artifact.model)}


def how(m, metrics: dict[str, Any]) -> str:
    return "multiply-accumulates of the Conv2D, DepthwiseConv2D and Dense layers at the input resolution, dense count"


MEASUREMENT = Measurement("macs", values=("macs",), details=(), measure=measure, how=how, always=True)
