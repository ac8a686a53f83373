"""Convert a Keras model to TFLite in one of a few quantization modes, and prove the result is one.

``QUANT_MODES`` is the one table of modes: the space validator, the converter, the exporter and the
tests all read it. Each row says how to ask the converter for the mode and what the flatbuffer must
then contain, because the converter's settings are requests, not guarantees: with
``TFLITE_BUILTINS_INT8`` alone, an op without an int8 kernel is still left in float between a
DEQUANTIZE and a QUANTIZE, and the file is called "int8" all the same. So ``convert`` always ends
with ``audit``, which reads the flatbuffer itself (ops, tensor types, quantization parameters) and
raises ``ConversionError`` when the model is not what its mode says.

Two rows need more than converter settings. ``qat_int8`` converts a model that learned its ranges
in quantization-aware training (``search.qat``); the fake quantization it carries is what makes
the converter emit int8, so it takes no calibration images and is refused for a float model.
``int8_selective`` is int8 with the ``float_layers`` ops that lose the most under int8 (ranked by
``search.quant_debug`` on the calibration images) left in float; its audit allows float for
exactly those ops and names them.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from search.errors import ConversionError, SpaceError

__all__ = ["QuantMode", "QUANT_MODES", "get_mode", "ConvertedModel", "Audit", "convert", "audit"]


@dataclass(frozen=True)
class QuantMode:
    """One row of the modes table: how to request the mode, and what the audit then demands."""

    name: str
    description: str
    needs_calibration: bool  # needs representative images (activation ranges are fixed offline)
    # The converter request. Names, not TensorFlow objects, so that reading the table (the space
    # validator, the CLI) does not import TensorFlow.
    optimize: bool  # converter.optimizations = [Optimize.DEFAULT]
    supported_types: tuple[str, ...] = ()  # target_spec.supported_types, tf dtype names
    supported_ops: tuple[str, ...] = ()  # target_spec.supported_ops, tf.lite.OpsSet names
    # What the flatbuffer must contain (schema TensorType names).
    weight_dtype: str = "FLOAT32"  # how every conv / fully-connected kernel is stored
    activation_dtype: str = "FLOAT32"  # what every op computes between the model's input and output
    # The dynamic-range quantizer leaves kernels below 1024 elements in float on purpose (nothing
    # to save); below this many elements a float kernel is not a failure of the mode.
    min_quantized_weight_elements: int = 0
    needs_qat: bool = False  # converts a quantization-aware-trained model (search.qat) only
    selective: bool = False  # keeps the ``float_layers`` most int8-sensitive ops in float


QUANT_MODES: dict[str, QuantMode] = {
    mode.name: mode
    for mode in (
        QuantMode(
            name="float32",
            description="plain conversion: float32 weights and activations (the reference)",
            needs_calibration=False,
            optimize=False,
        ),
        QuantMode(
            name="float16",
            description="float16 weights, dequantized to float32 at load; half the size, float compute",
            needs_calibration=False,
            optimize=True,
            supported_types=("float16",),
            weight_dtype="FLOAT16",
        ),
        QuantMode(
            name="dynamic_range",
            description="int8 weights, float activations quantized on the fly per op; no calibration",
            needs_calibration=False,
            optimize=True,
            weight_dtype="INT8",
            min_quantized_weight_elements=1024,
        ),
        QuantMode(
            name="int8",
            description="full integer: int8 weights and activations, ranges calibrated on images",
            needs_calibration=True,
            optimize=True,
            supported_ops=("TFLITE_BUILTINS_INT8",),
            weight_dtype="INT8",
            activation_dtype="INT8",
        ),
        QuantMode(
            name="int16x8",
            description="int16 activations with int8 weights: closer to float than int8, calibrated",
            needs_calibration=True,
            optimize=True,
            supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
            weight_dtype="INT8",
            activation_dtype="INT16",
        ),
        QuantMode(
            name="qat_int8",
            description="full integer after quantization-aware fine-tuning: ranges learned, not calibrated",
            needs_calibration=False,
            optimize=True,
            weight_dtype="INT8",
            activation_dtype="INT8",
            needs_qat=True,
        ),
        QuantMode(
            name="int8_selective",
            description="int8 with the N ops most sensitive to int8 kept in float (ranked on the calibration images)",
            needs_calibration=True,
            optimize=True,
            weight_dtype="INT8",
            activation_dtype="INT8",
            selective=True,
        ),
    )
}


def get_mode(name: str) -> QuantMode:
    """The row of ``QUANT_MODES`` called ``name``; an unknown name raises ``SpaceError`` with a hint."""
    try:
        return QUANT_MODES[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), QUANT_MODES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpaceError(
            f"unknown quantization mode '{name}'; {hint}choose from {', '.join(QUANT_MODES)}."
        ) from None


# --------------------------------------------------------------------------------------------
# Audit: what the flatbuffer really holds.

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
# Tensor types that carry activations; INT32 / INT64 / BOOL outputs are shape and index arithmetic.
_ACTIVATION_TYPES = {"FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT64", "INT8", "UINT8", "INT16"}
_INTEGER_TYPES = {"INT8", "UINT8", "INT16"}
# Ops whose input 1 is a kernel: the weights that quantization is meant to shrink.
_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_3D")
# QUANTIZE / DEQUANTIZE problems are symptoms; the op that stayed float (SIN, ...) is the cause,
# so its problem is listed first and is the one a ConversionError names.
_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class Audit:
    """What a flatbuffer contains, and every way it falls short of its mode (``problems``)."""

    mode: str
    passed: bool
    problems: tuple[str, ...]  # causes first (see _CONVERSION_OPS)
    op_counts: dict[str, int]  # builtin op name -> how many
    weight_dtypes: dict[str, int]  # stored dtype of conv / FC kernels -> how many
    activation_dtypes: dict[str, int]  # dtype computed by ops inside the model -> how many
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    float_layers: tuple[str, ...] = ()  # int8_selective: the ops found in float, as allowed

    @property
    def activation_dtype(self) -> str:
        """The one dtype the model computes in, ``mixed(A,B)``, or ``none`` (no ops)."""
        names = sorted(self.activation_dtypes)
        if len(names) <= 1:
            return names[0] if names else "none"
        return f"mixed({','.join(names)})"

    def summary(self) -> str:
        """One short line for trials.csv, e.g. ``pass int8: 60 ops; weights INT8x21; activations INT8; io FLOAT32``."""
        weights = ",".join(f"{k}x{v}" for k, v in sorted(self.weight_dtypes.items()))
        verdict = f"pass {self.mode}"
        if not self.passed:
            verdict = f"FAIL {self.mode} ({len(self.problems)} problems: {self.problems[0]})"
        kept_float = f"; float {len(self.float_layers)}: {', '.join(self.float_layers)}" if self.float_layers else ""
        return (
            f"{verdict}: {sum(self.op_counts.values())} ops; weights {weights}; "
            f"activations {self.activation_dtype}; io {'/'.join(sorted(set(self.input_dtypes)))}{kept_float}"
        )


def _read_flatbuffer(content: bytes):
    """The flatbuffer as schema objects; anything that is not a TFLite model is a ConversionError."""
    if bytes(content[4:8]) != b"TFL3":
        raise ConversionError(f"not a TFLite flatbuffer: file identifier {bytes(content[4:8])!r}, expected b'TFL3'.")
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    except Exception as error:  # flatbuffers raises whatever a truncated buffer trips over
        raise ConversionError(f"not a readable TFLite flatbuffer ({type(error).__name__}: {error})") from error


def _is_constant(model, tensor) -> bool:
    """A tensor with data in the file (a weight), as opposed to one computed at run time."""
    buffer = model.buffers[tensor.buffer] if tensor.buffer > 0 else None
    if buffer is None:
        return False
    # Models over 2 GB keep data outside the flatbuffer, addressed by offset.
    return (buffer.data is not None and len(buffer.data) > 0) or buffer.offset > 1


def _has_quantization(tensor) -> bool:
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def _stored_kernel(model, graph, producers, op):
    """The constant a kernel is stored as: the kernel itself, or the constant a DEQUANTIZE expands."""
    kernel = graph.tensors[op.inputs[1]]
    if _is_constant(model, kernel):
        return kernel
    producer = producers.get(op.inputs[1])
    if producer is not None and producer.inputs.size and _is_constant(model, graph.tensors[producer.inputs[0]]):
        return graph.tensors[producer.inputs[0]]  # float16 weights, or int8 ones expanded to float
    return None


def audit(content: bytes, *, mode: str, int8_io: bool = False, float_layers: Sequence[str] = ()) -> Audit:
    """Read the flatbuffer ``content`` and check it against ``QUANT_MODES[mode]``.

    Rules: every op inside the model computes in the mode's activation dtype (DEQUANTIZE at a
    float model output is the one way back to float; DEQUANTIZE of a constant is how float16
    weights are stored); integer activations and kernels carry quantization parameters; every
    conv / FC kernel is stored in the mode's weight dtype; the model's inputs and outputs are int8
    when ``int8_io`` and float32 otherwise.

    ``float_layers`` (selective modes only): output tensor names of ops allowed to compute in
    float with float kernels, fed by DEQUANTIZE; each must be found, in float, in the file.
    """
    spec = get_mode(mode)
    if int8_io and mode != "int8":
        raise ValueError(f"int8_io applies to mode 'int8' only, but got mode '{mode}'.")
    if float_layers and not spec.selective:
        raise ValueError(f"float_layers apply to selective modes only, but got mode '{mode}'.")
    allowed_float = set(float_layers)
    found_float: list[str] = []
    model = _read_flatbuffer(content)
    problems: list[tuple[int, str]] = []  # (rank, message): 0 for a cause, 1 for a symptom
    op_counts: Counter[str] = Counter()
    weight_dtypes: Counter[str] = Counter()
    activation_dtypes: Counter[str] = Counter()

    main = model.subgraphs[0]
    io_dtype = "INT8" if int8_io else "FLOAT32"
    input_dtypes = tuple(_TYPE_NAMES[main.tensors[i].type] for i in main.inputs)
    output_dtypes = tuple(_TYPE_NAMES[main.tensors[i].type] for i in main.outputs)
    for role, dtypes in (("input", input_dtypes), ("output", output_dtypes)):
        if any(d != io_dtype for d in dtypes):
            problems.append((0, f"model {role}s are {','.join(dtypes)}, but {mode} expects {io_dtype}"))

    for graph in model.subgraphs:
        tensors = graph.tensors
        producers = {out: op for op in graph.operators for out in op.outputs if out >= 0}
        consumers: dict[int, list] = {}
        for op in graph.operators:
            for tensor_index in op.inputs:
                consumers.setdefault(int(tensor_index), []).append(op)

        def kept_float(op) -> bool:
            return any(o >= 0 and tensors[o].name.decode(errors="replace") in allowed_float for o in op.outputs)

        for index, op in enumerate(graph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            op_counts[name] += 1
            # The output tensor's name leads back to the Keras layer ("yolov4_tiny/conv_3/...");
            # fused ops list several names separated by ";", the first one is enough.
            label = next((tensors[o].name for o in op.outputs if o >= 0), b"") or b""
            where = f"{name} (op {index}, {label.decode(errors='replace').split(';')[0]})"
            rank = 1 if name in _CONVERSION_OPS else 0
            in_dtype = _TYPE_NAMES[tensors[op.inputs[0]].type] if op.inputs.size and op.inputs[0] >= 0 else None

            # Back to float is allowed at the model's own float outputs only. (QUANTIZE needs no
            # exception: its output is integer, and a float input is flagged where it is made.)
            float_output = (
                name == "DEQUANTIZE"
                and all(o in graph.outputs for o in op.outputs)
                and in_dtype == spec.activation_dtype
            )
            stored_weight = name == "DEQUANTIZE" and _is_constant(model, tensors[op.inputs[0]])
            # Selective modes: the requested ops compute in float, and DEQUANTIZE leads into them.
            is_kept_float = kept_float(op)
            if is_kept_float:
                found_float.append(label.decode(errors="replace"))
            into_kept_float = (
                name == "DEQUANTIZE"
                and not stored_weight
                and all(consumers.get(o) and all(kept_float(c) for c in consumers[o]) for o in op.outputs)
            )
            if stored_weight and (spec.activation_dtype != "FLOAT32" or in_dtype != spec.weight_dtype):
                problems.append((rank, f"{where} expands {in_dtype} constants to float at run time"))
            for tensor in (tensors[o] for o in op.outputs if o >= 0):
                dtype = _TYPE_NAMES[tensor.type]
                if dtype not in _ACTIVATION_TYPES or float_output or stored_weight:
                    continue
                if dtype == "FLOAT32" and (is_kept_float or into_kept_float):
                    continue  # not counted in activation_dtypes: the mode's dtype is still the rule
                activation_dtypes[dtype] += 1
                if dtype != spec.activation_dtype:
                    expected = spec.activation_dtype
                    problems.append((rank, f"{where} computes {dtype}, but {mode} must compute in {expected}"))
                elif dtype in _INTEGER_TYPES and not _has_quantization(tensor):
                    problems.append((rank, f"{where} outputs {dtype} without a scale / zero point"))

            if name not in _KERNEL_OPS or op.inputs.size < 2 or op.inputs[1] < 0:
                continue
            stored = _stored_kernel(model, graph, producers, op)
            dtype = _TYPE_NAMES[stored.type] if stored is not None else "COMPUTED"
            weight_dtypes[dtype] += 1
            elements = int(np.prod(tensors[op.inputs[1]].shape))
            small_float = dtype == "FLOAT32" and (elements < spec.min_quantized_weight_elements or is_kept_float)
            if dtype != spec.weight_dtype and not small_float:
                problems.append((rank, f"{where} kernel is stored as {dtype}, but {mode} stores {spec.weight_dtype}"))
            elif dtype in _INTEGER_TYPES and not _has_quantization(stored):
                problems.append((rank, f"{where} kernel is {dtype} without a scale / zero point"))

    missing = sorted(allowed_float - set(found_float))
    if missing:
        problems.append((0, f"{len(missing)} float layers asked for are not in the model: {', '.join(missing)}"))
    return Audit(
        mode=mode,
        passed=not problems,
        problems=tuple(message for _, message in sorted(problems, key=lambda p: p[0])),
        op_counts=dict(op_counts),
        weight_dtypes=dict(weight_dtypes),
        activation_dtypes=dict(activation_dtypes),
        input_dtypes=input_dtypes,
        output_dtypes=output_dtypes,
        float_layers=tuple(found_float),
    )


# --------------------------------------------------------------------------------------------
# Conversion.


@dataclass(frozen=True)
class ConvertedModel:
    """A TFLite flatbuffer that passed its audit, with what it cost to make."""

    content: bytes = field(repr=False)
    mode: str
    int8_io: bool
    audit: Audit
    float_layers: tuple[str, ...]  # int8_selective: output tensors of the ops kept in float, worst first
    calibration_size: int  # images run through the model to fix activation ranges (0: none)
    calibration_seconds: float  # part of convert_seconds spent running the calibration images
    convert_seconds: float  # wall time of the whole conversion, calibration included


@contextlib.contextmanager
def _quiet_converter():
    """Silence the converter's C++ chatter on stderr and its Python warnings while it runs.

    Every conversion prints MLIR pass notes and "Statistics for quantized inputs were expected";
    in a search of hundreds of trials they bury the progress lines. Errors are not lost: the
    converter raises them as exceptions, and ``convert`` turns them into ``ConversionError``.
    """
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def _check_calibration_images(images, *, spec: QuantMode, resolution: int) -> np.ndarray | None:
    if not spec.needs_calibration:
        if images is not None:
            raise ValueError(f"mode '{spec.name}' takes no calibration images, but {len(images)} were given.")
        return None
    if images is None or len(images) == 0:
        raise ValueError(f"mode '{spec.name}' needs calibration images, but none were given.")
    images = np.asarray(images)
    if images.dtype != np.float32 or images.shape[1:] != (resolution, resolution, 3):
        raise ValueError(
            f"calibration images must be float32 (n, {resolution}, {resolution}, 3), "
            f"but got {images.dtype} {images.shape}."
        )
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(
            f"calibration images must be in [0, 1] like the model's input, but span "
            f"[{images.min():.3g}, {images.max():.3g}]."
        )
    return images


def _first_error_line(error: Exception) -> str:
    """The converter's exceptions are pages of MLIR; the line starting with ``error:`` says why."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line[line.index("error:") :]
    return lines[0] if lines else type(error).__name__


def _make_converter(model, *, spec: QuantMode, int8_io: bool, resolution: int):
    """A TFLiteConverter for ``model`` configured as the table row ``spec`` asks."""
    from search.compat import tf  # here, not at the top: reading QUANT_MODES must stay cheap

    # A concrete function with batch 1, saved through a bare tf.Module holding the variables:
    # handing the converter the Keras model instead makes it serialise every layer's functions
    # (3-4x slower for this model) for nothing the flatbuffer keeps.
    signature = tf.TensorSpec((1, resolution, resolution, 3), tf.float32, name="image")
    function = tf.function(lambda image: model(image, training=False)).get_concrete_function(signature)
    holder = tf.Module()
    holder.variables_to_keep = list(model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)

    if spec.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if spec.supported_types:
        converter.target_spec.supported_types = [tf.as_dtype(name) for name in spec.supported_types]
    if spec.supported_ops:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, name) for name in spec.supported_ops]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def _is_quantize_aware(model) -> bool:
    """Whether ``model`` carries TFMOT fake quantization (``search.qat``), by its layer classes."""
    return any(type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer") for layer in model.layers)


def convert(
    model,
    *,
    mode: str,
    calibration_images: np.ndarray | None = None,
    int8_io: bool = False,
    float_layers: int = 0,
) -> ConvertedModel:
    """Convert the Keras ``model`` to TFLite in ``mode`` and audit the result.

    ``calibration_images``: float32 ``(n, r, r, 3)`` in ``[0, 1]``, each fed to the calibrator
    exactly once per pass, for the modes that need calibration (and only those). ``int8_io``: int8
    input and output tensors instead of float32 (mode ``int8`` only), for targets that take raw
    bytes. ``float_layers``: for ``int8_selective``, how many of the ops most sensitive to int8
    stay in float (0: plain int8 through the same path). ``qat_int8`` takes a model from
    ``search.qat.quantize_aware_fine_tune``. Raises ``ConversionError`` when the converter fails
    or the audit finds the model is not what ``mode`` says.
    """
    spec = get_mode(mode)
    if int8_io and mode != "int8":
        raise ValueError(f"int8_io applies to mode 'int8' only, but got mode '{mode}'.")
    if float_layers and not spec.selective:
        raise ValueError(f"float_layers applies to selective modes only, but got mode '{mode}'.")
    if spec.needs_qat and not _is_quantize_aware(model):
        raise ValueError(
            f"mode '{mode}' converts a quantization-aware-trained model (search.qat.quantize_aware_fine_tune), "
            f"but model {model.name!r} has no fake quantization."
        )
    _, height, width, _ = model.input_shape
    if height is None or height != width:
        raise ValueError(f"model input must be square with a fixed size to convert, but got {model.input_shape}.")
    images = _check_calibration_images(calibration_images, spec=spec, resolution=height)

    start = time.perf_counter()
    converter = _make_converter(model, spec=spec, int8_io=int8_io, resolution=height)
    calibration = {"passes": 0, "seconds": 0.0}

    def representative_dataset():
        # Each image once per pass, batch 1. The converter runs the float model between our
        # yields, so a pass's wall time is its calibration time. (int16x8 makes two passes.)
        pass_start = time.perf_counter()
        for image in images:
            yield [image[None]]
        calibration["passes"] += 1
        calibration["seconds"] += time.perf_counter() - pass_start

    if images is not None:
        converter.representative_dataset = representative_dataset
    kept_float: tuple[str, ...] = ()
    try:
        with _quiet_converter():
            if spec.selective:
                from search.quant_debug import convert_selective  # it builds on this module

                content, kept_float = convert_selective(converter, images=images, float_layers=float_layers)
            else:
                content = converter.convert()
    except Exception as error:  # the converter raises several unrelated types
        raise ConversionError(f"{mode} conversion failed: {_first_error_line(error)}") from error
    convert_seconds = time.perf_counter() - start

    if images is not None and calibration["passes"] == 0:
        raise ConversionError(f"{mode} conversion stopped before reading all {len(images)} calibration images.")

    result = audit(content, mode=mode, int8_io=int8_io, float_layers=kept_float)
    if not result.passed:
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise ConversionError(f"{mode} audit failed: {result.problems[0]}{more}")
    return ConvertedModel(
        content=content,
        mode=mode,
        int8_io=int8_io,
        audit=result,
        float_layers=kept_float,
        calibration_size=0 if images is None else len(images),
        calibration_seconds=calibration["seconds"],
        convert_seconds=convert_seconds,
    )
