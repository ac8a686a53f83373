"""What a TFLite flatbuffer really holds, checked against the mode it claims to be.

``audit`` reads the file itself (ops, tensor types, quantization parameters) and lists every way
it falls short of its row of ``QUANT_MODES``; ``convert`` refuses to hand over a file whose audit
failed. The TFLite schema is imported on first use: reading the package stays cheap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from search.errors import ConversionError
from search.quantize.modes import QuantMode, get_mode

__all__ = ["Audit", "audit"]

# Tensor types that carry activations; INT32 / INT64 / BOOL outputs are shape and index arithmetic.
_ACTIVATION_TYPES = {"FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT64", "INT8", "UINT8", "INT16"}
_INTEGER_TYPES = {"INT8", "UINT8", "INT16"}
# Ops whose input 1 is a kernel: the weights that quantization is meant to shrink.
_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_3D")
# QUANTIZE / DEQUANTIZE problems are symptoms; the op that stayed float (SIN, ...) is the cause,
# so its problem is listed first and is the one a ConversionError names.
_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")
# The op that expands a sparse-encoded constant (the tensor's ``sparsity`` field) to its dense
# form when the interpreter prepares the model: a way of storing a weight, not a computation.
_DENSIFY = "DENSIFY"


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
    float_layers: tuple[str, ...] = ()  # selective and head modes: the ops found out of int8, as allowed
    # Each of those ops as ``OP label [activations A, weights W]`` (what "int8" does not cover).
    kept_ops: tuple[str, ...] = ()
    # Constants stored in TFLite's sparse encoding (their flatbuffer ``sparsity`` field is set), by name.
    sparse_tensors: tuple[str, ...] = ()

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
        kept_float = f"; float {len(self.float_layers)}: {', '.join(self.kept_ops or self.float_layers)}" if self.float_layers else ""
        sparse = f"; sparse {len(self.sparse_tensors)}: {', '.join(self.sparse_tensors)}" if self.sparse_tensors else ""
        return (
            f"{verdict}: {sum(self.op_counts.values())} ops; weights {weights}; "
            f"activations {self.activation_dtype}; io {'/'.join(sorted(set(self.input_dtypes)))}{kept_float}{sparse}"
        )


def audit(content: bytes, *, mode: str, int8_io: bool = False, float_layers: Sequence[str] = ()) -> Audit:
    """Read the flatbuffer ``content`` and check it against ``QUANT_MODES[mode]``.

    Rules: every op inside the model computes in the mode's activation dtype (DEQUANTIZE at a
    float model output is the one way back to float; DEQUANTIZE of a constant is how float16
    weights are stored); integer activations and kernels carry quantization parameters; every
    conv / FC kernel is stored in the mode's weight dtype; the model's inputs and outputs are int8
    when ``int8_io`` and float32 otherwise.

    ``float_layers`` (modes whose row ``keeps`` some ops): output tensor names of ops allowed to
    compute in float with kernels stored as the row's ``kept_weight_dtype``, fed by DEQUANTIZE;
    each must be found, in float, in the file. A row that keeps the ``heads`` allows only ops
    whose outputs are the model's outputs (or feed only other kept ops), and every model output
    must come from one of them.
    """
    spec = get_mode(mode)
    if int8_io and mode != "int8":
        raise ValueError(f"int8_io applies to mode 'int8' only, but got mode '{mode}'.")
    if float_layers and spec.keeps == "none":
        raise ValueError(f"float_layers apply to modes that keep ops out of int8 only, but got mode '{mode}'.")
    model = _read_flatbuffer(content)
    findings = _Findings()
    input_dtypes, output_dtypes = _check_io(model.subgraphs[0], mode=mode, int8_io=int8_io, findings=findings)
    allowed_float = set(float_layers)
    sparse_tensors = [tensor.name.decode(errors="replace").split(";")[0] for graph in model.subgraphs
                      for tensor in graph.tensors if tensor.sparsity is not None]
    for graph in model.subgraphs:
        view = _Graph(model, graph, allowed_float=allowed_float)
        for index, op in enumerate(graph.operators):
            _check_op(view, view.describe(index, op), spec=spec, findings=findings)
        if spec.keeps_heads:
            _check_heads(view, spec=spec, findings=findings)

    missing = sorted(allowed_float - set(findings.found_float))
    if missing:
        findings.add(0, f"{len(missing)} float layers asked for are not in the model: {', '.join(missing)}")
    return Audit(
        mode=mode,
        passed=not findings.problems,
        problems=tuple(message for _, message in sorted(findings.problems, key=lambda p: p[0])),
        op_counts=dict(findings.op_counts),
        weight_dtypes=dict(findings.weight_dtypes),
        activation_dtypes=dict(findings.activation_dtypes),
        input_dtypes=input_dtypes,
        output_dtypes=output_dtypes,
        float_layers=tuple(findings.found_float),
        kept_ops=tuple(findings.kept_ops),
        sparse_tensors=tuple(sparse_tensors),
    )


# --------------------------------------------------------------------------------------------
# Reading the file.


@cache
def _schema():
    from ai_edge_litert import schema_py_generated as schema  # here: reading QUANT_MODES stays cheap

    return schema


@cache
def _op_names() -> dict[int, str]:
    return {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}


@cache
def _type_names() -> dict[int, str]:
    return {v: k for k, v in vars(_schema().TensorType).items() if not k.startswith("_")}


def _read_flatbuffer(content: bytes):
    """The flatbuffer as schema objects; anything that is not a TFLite model is a ConversionError."""
    if bytes(content[4:8]) != b"TFL3":
        raise ConversionError(f"not a TFLite flatbuffer: file identifier {bytes(content[4:8])!r}, expected b'TFL3'.")
    try:
        return _schema().ModelT.InitFromPackedBuf(bytearray(content), 0)
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


@dataclass
class _Findings:
    """What the audit has counted so far, and its problems as (rank, message): 0 cause, 1 symptom."""

    problems: list[tuple[int, str]] = field(default_factory=list)
    op_counts: Counter[str] = field(default_factory=Counter)
    weight_dtypes: Counter[str] = field(default_factory=Counter)
    activation_dtypes: Counter[str] = field(default_factory=Counter)
    found_float: list[str] = field(default_factory=list)  # output tensors of the allowed float ops
    kept_ops: list[str] = field(default_factory=list)  # the same ops, as Audit.kept_ops describes them

    def add(self, rank: int, message: str) -> None:
        self.problems.append((rank, message))


@dataclass(frozen=True)
class _Op:
    """One operator with what every check needs to know about it."""

    op: object
    name: str  # builtin op name
    label: str  # its first output tensor's name
    where: str  # how a problem names it: ``CONV_2D (op 3, model/conv_3/Conv2D)``
    rank: int  # 0: a cause, 1: a QUANTIZE / DEQUANTIZE symptom
    in_dtype: str | None  # dtype of input 0
    kept_float: bool  # one of the ops the selective mode was allowed to keep in float


class _Graph:
    """One subgraph, with who makes and who reads each tensor."""

    def __init__(self, model, graph, *, allowed_float: set[str]):
        self.model, self.graph, self.tensors = model, graph, graph.tensors
        self.allowed_float = allowed_float
        self.producers = {out: op for op in graph.operators for out in op.outputs if out >= 0}
        self.consumers: dict[int, list] = {}
        for op in graph.operators:
            for tensor_index in op.inputs:
                self.consumers.setdefault(int(tensor_index), []).append(op)

    def kept_float(self, op) -> bool:
        return any(o >= 0 and self.tensors[o].name.decode(errors="replace") in self.allowed_float for o in op.outputs)

    def describe(self, index: int, op) -> _Op:
        tensors = self.tensors
        name = self.op_name(op)
        # The output tensor's name leads back to the Keras layer ("model/conv_3/..."); fused ops
        # list several names separated by ";", the first one is enough.
        label = (next((tensors[o].name for o in op.outputs if o >= 0), b"") or b"").decode(errors="replace")
        in_dtype = _type_names()[tensors[op.inputs[0]].type] if op.inputs.size and op.inputs[0] >= 0 else None
        return _Op(
            op=op,
            name=name,
            label=label,
            where=f"{name} (op {index}, {label.split(';')[0]})",
            rank=1 if name in _CONVERSION_OPS else 0,
            in_dtype=in_dtype,
            kept_float=self.kept_float(op),
        )

    def op_name(self, op) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return _op_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")

    def constant(self, tensor_index: int):
        """The constant stored for this tensor: the tensor itself, or the sparse constant a DENSIFY
        expands into it; None for a tensor computed at run time."""
        tensor = self.tensors[tensor_index]
        if _is_constant(self.model, tensor):
            return tensor
        producer = self.producers.get(tensor_index)
        if producer is not None and self.op_name(producer) == _DENSIFY and producer.inputs.size:
            source = self.tensors[producer.inputs[0]]
            return source if _is_constant(self.model, source) else None
        return None

    def stored_kernel(self, op):
        """The constant a kernel is stored as: the kernel itself, or the constant a DEQUANTIZE expands
        (each possibly sparse-encoded, behind a DENSIFY)."""
        kernel = self.constant(op.inputs[1])
        if kernel is not None:
            return kernel
        producer = self.producers.get(op.inputs[1])
        if producer is not None and producer.inputs.size and producer.inputs[0] >= 0:
            return self.constant(producer.inputs[0])  # float16 weights, or int8 ones expanded to float
        return None


# --------------------------------------------------------------------------------------------
# The checks.


def _check_io(main, *, mode: str, int8_io: bool, findings: _Findings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The model's input and output dtypes; int8 with ``int8_io``, float32 otherwise."""
    io_dtype = "INT8" if int8_io else "FLOAT32"
    input_dtypes = tuple(_type_names()[main.tensors[i].type] for i in main.inputs)
    output_dtypes = tuple(_type_names()[main.tensors[i].type] for i in main.outputs)
    for role, dtypes in (("input", input_dtypes), ("output", output_dtypes)):
        if any(d != io_dtype for d in dtypes):
            findings.add(0, f"model {role}s are {','.join(dtypes)}, but {mode} expects {io_dtype}")
    return input_dtypes, output_dtypes


def _check_op(view: _Graph, op: _Op, *, spec: QuantMode, findings: _Findings) -> None:
    findings.op_counts[op.name] += 1
    if op.kept_float:
        findings.found_float.append(op.label)
    _check_outputs(view, op, spec=spec, findings=findings)
    kernel = _check_kernel(view, op, spec=spec, findings=findings)
    if op.kept_float:
        outputs = {_type_names()[view.tensors[o].type] for o in op.op.outputs if o >= 0}
        if outputs & _INTEGER_TYPES:
            findings.add(op.rank, f"{op.where} was to stay out of int8, but computes {','.join(sorted(outputs))}")
        weights = f", weights {kernel}" if kernel else ""
        findings.kept_ops.append(f"{op.name} {op.label.split(';')[0]} [activations {','.join(sorted(outputs))}{weights}]")


def _check_outputs(view: _Graph, op: _Op, *, spec: QuantMode, findings: _Findings) -> None:
    """Every output computes in the mode's activation dtype, with a scale when it is integer."""
    tensors, raw = view.tensors, op.op
    # Back to float is allowed at the model's own float outputs only. (QUANTIZE needs no
    # exception: its output is integer, and a float input is flagged where it is made.)
    float_output = (
        op.name == "DEQUANTIZE"
        and all(o in view.graph.outputs for o in raw.outputs)
        and op.in_dtype == spec.activation_dtype
    )
    if op.name == _DENSIFY and view.constant(raw.inputs[0]) is not None:
        return  # a sparse-encoded weight expanded at load: its output is that weight, not an activation
    stored_weight = op.name == "DEQUANTIZE" and view.constant(raw.inputs[0]) is not None
    # Selective modes: the requested ops compute in float, and DEQUANTIZE leads into them.
    into_kept_float = (
        op.name == "DEQUANTIZE"
        and not stored_weight
        and all(view.consumers.get(o) and all(view.kept_float(c) for c in view.consumers[o]) for o in raw.outputs)
    )
    if stored_weight and (spec.activation_dtype != "FLOAT32" or op.in_dtype != spec.weight_dtype):
        findings.add(op.rank, f"{op.where} expands {op.in_dtype} constants to float at run time")
    for tensor in (tensors[o] for o in raw.outputs if o >= 0):
        dtype = _type_names()[tensor.type]
        if dtype not in _ACTIVATION_TYPES or float_output or stored_weight:
            continue
        if dtype == "FLOAT32" and (op.kept_float or into_kept_float):
            continue  # not counted in activation_dtypes: the mode's dtype is still the rule
        findings.activation_dtypes[dtype] += 1
        if dtype != spec.activation_dtype:
            findings.add(op.rank, f"{op.where} computes {dtype}, but {spec.name} must compute in {spec.activation_dtype}")
        elif dtype in _INTEGER_TYPES and not _has_quantization(tensor):
            findings.add(op.rank, f"{op.where} outputs {dtype} without a scale / zero point")


def _check_kernel(view: _Graph, op: _Op, *, spec: QuantMode, findings: _Findings) -> str | None:
    """A conv / FC kernel is stored in the mode's weight dtype (small ones may stay float, kept ones
    are the row's ``kept_weight_dtype``); returns the dtype found, None for an op without a kernel."""
    raw = op.op
    if op.name not in _KERNEL_OPS or raw.inputs.size < 2 or raw.inputs[1] < 0:
        return None
    stored = view.stored_kernel(raw)
    dtype = _type_names()[stored.type] if stored is not None else "COMPUTED"
    findings.weight_dtypes[dtype] += 1
    elements = int(np.prod(view.tensors[raw.inputs[1]].shape))
    small_float = dtype == "FLOAT32" and elements < spec.min_quantized_weight_elements
    if op.kept_float and dtype != spec.kept_weight_dtype:
        findings.add(op.rank, f"{op.where} is kept out of int8 with a {dtype} kernel, but {spec.name} keeps "
                              f"{spec.kept_weight_dtype} kernels")
    elif dtype != spec.weight_dtype and not small_float and not op.kept_float:
        findings.add(op.rank, f"{op.where} kernel is stored as {dtype}, but {spec.name} stores {spec.weight_dtype}")
    elif dtype in _INTEGER_TYPES and not _has_quantization(stored):
        findings.add(op.rank, f"{op.where} kernel is {dtype} without a scale / zero point")
    return dtype


def _check_heads(view: _Graph, *, spec: QuantMode, findings: _Findings) -> None:
    """Only the detection outputs are kept: kept ops feed the model's outputs alone, and make all of them."""
    graph = view.graph
    outputs = {int(o) for o in graph.outputs}
    for index, raw in enumerate(graph.operators):
        if not view.kept_float(raw):
            continue
        feeds_network = any(int(o) not in outputs and not all(view.kept_float(c) for c in view.consumers.get(int(o), []))
                            for o in raw.outputs if o >= 0)
        if feeds_network:
            findings.add(0, f"{view.describe(index, raw).where} is kept out of int8 but feeds the network; "
                            f"{spec.name} keeps only the detection-output ops")
    for output in sorted(outputs):
        producer = view.producers.get(output)
        if producer is None or not view.kept_float(producer):
            findings.add(0, f"model output {view.tensors[output].name.decode(errors='replace')} is not made by a kept "
                            f"head op, but {spec.name} keeps every detection output out of int8")
