"""The one table of quantization modes: how to ask the converter for each, and what the file must hold.

The space validator, the converter, the exporter and the tests all read ``QUANT_MODES``, so this
module imports nothing heavy: reading the table must not start TensorFlow.

Each row says how to ask the converter for the mode (``request``), how to run it (``strategy``)
and what the flatbuffer must then contain, because the converter's settings are requests, not
guarantees: with ``TFLITE_BUILTINS_INT8`` alone, an op without an int8 kernel is still left in
float between a DEQUANTIZE and a QUANTIZE, and the file is called "int8" all the same. So
``convert`` always ends with ``audit``, which reads the flatbuffer itself.

Two rows need more than converter settings. ``qat_int8`` converts a model that learned its ranges
in quantization-aware training (``search.qat``); the fake quantization it carries is what makes
the converter emit int8, so it takes no calibration images and is refused for a float model.
``int8_selective`` is int8 with the ``float_layers`` ops that lose the most under int8 (ranked by
TFLite's quantization debugger on the calibration images) left in float; its strategy is
``strategies.selective``, and its audit allows float for exactly those ops and names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import search.quantize.strategies as strategies
from search.spec import choose

__all__ = ["ConverterRequest", "QuantMode", "QUANT_MODES", "get_mode"]


@dataclass(frozen=True)
class ConverterRequest:
    """The converter settings a mode asks for. Names, not TensorFlow objects, so that reading the
    table (the space validator, the CLI) does not import TensorFlow."""

    optimize: bool = False  # converter.optimizations = [Optimize.DEFAULT]
    supported_types: tuple[str, ...] = ()  # target_spec.supported_types, tf dtype names
    supported_ops: tuple[str, ...] = ()  # target_spec.supported_ops, tf.lite.OpsSet names


@dataclass(frozen=True)
class QuantMode:
    """One row of the modes table: how to request and run the mode, and what the audit then demands."""

    name: str
    description: str
    needs_calibration: bool  # needs representative images (activation ranges are fixed offline)
    request: ConverterRequest
    # strategy(converter, *, images, float_layers) -> (flatbuffer, output tensors kept in float)
    strategy: Callable = strategies.plain
    # What the flatbuffer must contain (schema TensorType names).
    weight_dtype: str = "FLOAT32"  # how every conv / fully-connected kernel is stored
    activation_dtype: str = "FLOAT32"  # what every op computes between the model's input and output
    # The dynamic-range quantizer leaves kernels below 1024 elements in float on purpose (nothing
    # to save); below this many elements a float kernel is not a failure of the mode.
    min_quantized_weight_elements: int = 0
    needs_qat: bool = False  # converts a quantization-aware-trained model (search.qat) only

    @property
    def selective(self) -> bool:
        """Whether the mode keeps ``float_layers`` ops in float (the search asks for a count only then).
        Read from the strategy, so the row cannot say one thing and do another."""
        return self.strategy is strategies.selective


QUANT_MODES: dict[str, QuantMode] = {
    mode.name: mode
    for mode in (
        QuantMode(
            name="float32",
            description="plain conversion: float32 weights and activations (the reference)",
            needs_calibration=False,
            request=ConverterRequest(),
        ),
        QuantMode(
            name="float16",
            description="float16 weights, dequantized to float32 at load; half the size, float compute",
            needs_calibration=False,
            request=ConverterRequest(optimize=True, supported_types=("float16",)),
            weight_dtype="FLOAT16",
        ),
        QuantMode(
            name="dynamic_range",
            description="int8 weights, float activations quantized on the fly per op; no calibration",
            needs_calibration=False,
            request=ConverterRequest(optimize=True),
            weight_dtype="INT8",
            min_quantized_weight_elements=1024,
        ),
        QuantMode(
            name="int8",
            description="full integer: int8 weights and activations, ranges calibrated on images",
            needs_calibration=True,
            request=ConverterRequest(optimize=True, supported_ops=("TFLITE_BUILTINS_INT8",)),
            weight_dtype="INT8",
            activation_dtype="INT8",
        ),
        QuantMode(
            name="int16x8",
            description="int16 activations with int8 weights: closer to float than int8, calibrated",
            needs_calibration=True,
            request=ConverterRequest(
                optimize=True, supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",)
            ),
            weight_dtype="INT8",
            activation_dtype="INT16",
        ),
        QuantMode(
            name="qat_int8",
            description="full integer after quantization-aware fine-tuning: ranges learned, not calibrated",
            needs_calibration=False,
            request=ConverterRequest(optimize=True),
            weight_dtype="INT8",
            activation_dtype="INT8",
            needs_qat=True,
        ),
        QuantMode(
            name="int8_selective",
            description="int8 with the N ops most sensitive to int8 kept in float (ranked on the calibration images)",
            needs_calibration=True,
            # No op-set restriction: the ops kept in float must be allowed to stay float.
            request=ConverterRequest(optimize=True),
            strategy=strategies.selective,
            weight_dtype="INT8",
            activation_dtype="INT8",
        ),
    )
}


def get_mode(name: str) -> QuantMode:
    """The row of ``QUANT_MODES`` called ``name``; an unknown name raises ``SpaceError`` with a hint."""
    return choose(QUANT_MODES, name, what="quantization mode")
