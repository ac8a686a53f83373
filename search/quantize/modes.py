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

The int8 recipes (``strategies.recipe``: calibrate once, then TFLite's own quantizer with the
row's choices) keep the detection outputs at higher precision, where one int8 scale per head
tensor is shared by box offsets and class logits and costs the most accuracy: ``keeps="heads"``
leaves the family's head convolutions (``ModelFamily.head_layers``) out of int8, in float
(``kept_weight_dtype="FLOAT32"``) or with int8 weights and float activations (``"INT8"``: the
dynamic-range kernel, int8 multiply-accumulates, float output). The audit checks that exactly
those ops, and nothing else, compute outside the row's activation dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import search.quantize.strategies as strategies
from search.spec import choose

__all__ = ["ConverterRequest", "QuantMode", "QUANT_MODES", "KEEPS", "RANGES", "get_mode"]

# Which ops a row lets compute outside its activation dtype (the audit reads it).
KEEPS = {
    "none": "every op computes in the row's activation dtype",
    "chosen": "the float_layers ops its strategy ranks worst stay float (the search asks for a count)",
    "heads": "the detection-output convolutions (the family's head_layers) stay out of int8",
}
# How activation ranges are set from the calibration images (strategies.recipe).
RANGES = {
    "minmax": "TFLite's calibrator: each tensor's min and max over the calibration images",
    "percentile": "each tensor's 0.01 and 99.99 percentiles over the calibration images (outliers clipped)",
}
_SELECTIVE = (strategies.selective, strategies.selective_by_heads)


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
    # strategy(converter, *, spec, images, float_layers, heads) -> (flatbuffer, output tensors kept out of int8)
    strategy: Callable = strategies.plain
    # What the flatbuffer must contain (schema TensorType names).
    weight_dtype: str = "FLOAT32"  # how every conv / fully-connected kernel is stored
    activation_dtype: str = "FLOAT32"  # what every op computes between the model's input and output
    # The dynamic-range quantizer leaves kernels below 1024 elements in float on purpose (nothing
    # to save); below this many elements a float kernel is not a failure of the mode.
    min_quantized_weight_elements: int = 0
    needs_qat: bool = False  # converts a quantization-aware-trained model (search.qat) only
    keeps: str = "none"  # which ops may compute outside activation_dtype: a key of KEEPS
    # How the kept ops' kernels are stored: FLOAT32 (float compute) or INT8 (dynamic range).
    kept_weight_dtype: str = "FLOAT32"
    ranges: str = "minmax"  # how activation ranges are set: a key of RANGES
    bias_correction: bool = False  # int8 conv biases absorb each conv's mean error per channel (recipe)

    def __post_init__(self):
        if self.keeps not in KEEPS:
            raise ValueError(f"keeps must be one of {', '.join(KEEPS)}, but got {self.keeps!r} (mode {self.name}).")
        if self.ranges not in RANGES:
            raise ValueError(f"ranges must be one of {', '.join(RANGES)}, but got {self.ranges!r} (mode {self.name}).")
        if (self.keeps == "chosen") != (self.strategy in _SELECTIVE):
            raise ValueError(f"keeps must be 'chosen' exactly when the strategy is selective, but got "
                             f"{self.keeps!r} with {self.strategy.__name__} (mode {self.name}).")
        recipe_only = self.keeps == "heads" or self.ranges != "minmax" or self.bias_correction
        if recipe_only and self.strategy is not strategies.recipe:
            raise ValueError(f"strategy must be recipe for keeps='heads', ranges other than minmax or bias "
                             f"correction, but got {self.strategy.__name__} (mode {self.name}).")

    @property
    def selective(self) -> bool:
        """Whether the mode keeps ``float_layers`` ops in float (the search asks for a count only then).
        Checked against the strategy, so the row cannot say one thing and do another."""
        return self.keeps == "chosen"

    @property
    def sparse_encodable(self) -> bool:
        """Whether ``convert(sparse_encoding=True)`` applies: modes made by one converter call. The
        others quantize with TFLite's MLIR quantizer directly, which does not run the sparsity pass."""
        return self.strategy is strategies.plain

    @property
    def keeps_heads(self) -> bool:
        """Whether the mode keeps the family's detection-output convs out of int8 (convert needs them)."""
        return self.keeps == "heads"


# What every calibrated full-integer row asks by default: no op-set restriction, since the ops a
# strategy keeps out of int8 must be allowed to stay float (plain int8 restricts it: its row says so).
_INT8_REQUEST = ConverterRequest(optimize=True)
# The detection-output convs with int8 kernels and float activations (TFLite's dynamic-range conv).
_DYNAMIC_HEADS = {"keeps": "heads", "kept_weight_dtype": "INT8"}


def _int8(name: str, description: str, *, request: ConverterRequest = _INT8_REQUEST, **row) -> QuantMode:
    """A calibrated full-integer row: int8 kernels and activations; ``row``: the rest of what sets it apart."""
    return QuantMode(name=name, description=description, needs_calibration=True, request=request,
                     weight_dtype="INT8", activation_dtype="INT8", **row)


def _recipe(name: str, description: str, **choices) -> QuantMode:
    """An int8 recipe (``strategies.recipe``); ``choices``: its ``keeps``, ``kept_weight_dtype``,
    ``ranges`` and ``bias_correction``."""
    return _int8(name, description, strategy=strategies.recipe, **choices)


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
        _int8("int8", "full integer: int8 weights and activations, ranges calibrated on images",
              request=ConverterRequest(optimize=True, supported_ops=("TFLITE_BUILTINS_INT8",))),
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
        _int8("int8_selective", "int8 with the N ops most sensitive to int8 kept in float (ranked on the calibration images)",
              strategy=strategies.selective, keeps="chosen"),
        _int8("int8_selective_heads", "int8 with the N conv layers (conv + activation) kept in float whose float version "
              "brings the heads' outputs closest to float (measured on calibration images)",
              strategy=strategies.selective_by_heads, keeps="chosen"),
        _recipe("int8_float_heads", "int8 except the detection-output convs, which stay float32 (weights and compute)",
                keeps="heads"),
        _recipe("int8_dynamic_heads", "int8 except the detection-output convs: int8 weights, float activations "
                "quantized on the fly (dynamic range), float outputs", **_DYNAMIC_HEADS),
        _recipe("int8_percentile", "full integer with activation ranges at each tensor's 0.01/99.99 percentiles",
                ranges="percentile"),
        _recipe("int8_dynamic_heads_bias_corrected",
                "int8_dynamic_heads with each int8 conv's bias corrected by its mean error per channel",
                **_DYNAMIC_HEADS, bias_correction=True),
        _recipe("int8_dynamic_heads_percentile", "int8_dynamic_heads with percentile activation ranges",
                **_DYNAMIC_HEADS, ranges="percentile"),
        _recipe("int8_dynamic_heads_percentile_bias_corrected",
                "int8_dynamic_heads with percentile activation ranges and corrected conv biases",
                **_DYNAMIC_HEADS, ranges="percentile", bias_correction=True),
    )
}


def get_mode(name: str) -> QuantMode:
    """The row of ``QUANT_MODES`` called ``name``; an unknown name raises ``SpaceError`` with a hint."""
    return choose(QUANT_MODES, name, what="quantization mode")
