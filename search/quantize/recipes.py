"""The steps of ``strategies.recipe``: calibrate once, adjust, quantize with TFLite's own quantizer.

``calibrate_only`` runs the converter's calibration and returns the float model annotated with
each activation's min / max (what ``QuantizationDebugger`` quantizes from); ``quantize`` is the
MLIR quantizer the converter itself calls (``tf.lite.python.convert.mlir_quantize``, as the
debugger calls it), with ``denylisted_nodes`` for the ops kept in float. Between the two,
``with_percentile_ranges`` replaces the min / max by percentiles of each tensor's values, and
``head_nodes`` finds the ops that make the detection outputs. After it, ``with_int8_kernels``
stores kept convolutions' kernels as int8 per output channel, which turns them into TFLite's
dynamic-range (hybrid) convolution: float input quantized on the fly, int8 multiply-accumulates,
float output.

(Google's ``ai-edge-quantizer`` takes such per-op recipes too, int16 activations included, but
0.10.0 cannot quantize LEAKY_RELU, which follows every convolution of these networks.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PERCENTILE", "calibrate_only", "quantize", "head_nodes", "with_percentile_ranges", "with_int8_kernels",
           "rank_by_head_error", "channel_mean_errors", "with_corrected_biases"]

PERCENTILE = 99.99  # ranges at the 0.01 / 99.99 percentiles (modes.RANGES["percentile"])
SAMPLES_PER_IMAGE = 4096  # values drawn per tensor and image for the percentiles (the extremes are kept too)
BIAS_IMAGES = 32  # calibration images each conv's mean error per channel is measured on (bias correction)
HEAD_ERROR_IMAGES = 8  # calibration images each candidate's head error is measured on
# Activations a Darknet conv layer ends in, kept in float with their conv by selective_by_heads.
_ACTIVATION_OPS = ("LEAKY_RELU", "LOGISTIC", "RELU", "RELU6", "HARD_SWISH", "TANH")
# Ops between a head convolution and the model's output (YOLOv7-style heads end in a logistic).
_HEAD_TAIL_OPS = ("LOGISTIC",)


def calibrate_only(converter) -> bytes:
    """The float model with calibrated min / max on every activation (the converter's representative data)."""
    converter.experimental_new_quantizer = True
    converter._experimental_calibrate_only = True  # what QuantizationDebugger sets: calibrate, do not quantize
    return converter.convert()


def quantize(calibrated: bytes, *, float_nodes: Sequence[str] = (), numeric_verify: bool = False) -> bytes:
    """int8 from a calibrated model, float I/O, the ops making ``float_nodes`` left in float;
    ``numeric_verify``: the debugger's model instead (each quantized op checked against float)."""
    from tensorflow.lite.python import convert as tflite_convert  # the quantizer the converter runs

    return tflite_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                        enable_numeric_verify=numeric_verify,
                                        denylisted_nodes=list(float_nodes) or None)


def _model(content: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(content))


def _op_name(model, op) -> str:
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)


def _tensor_name(graph, index: int) -> str:
    return graph.tensors[index].name.decode(errors="replace")


def head_nodes(calibrated: bytes, heads: Sequence[tuple[int, ...]]) -> tuple[str, ...]:
    """Output tensor names of the ops that make the model's outputs, back to their convolutions.

    ``heads``: the family's head convolutions' output shapes ``(h, w, channels)``; each model
    output must come from a CONV_2D of one of them (through a logistic at most), or ValueError.
    """
    if not heads:
        raise ValueError("heads must give the shapes of the family's head convolutions, but got none.")
    model = _model(calibrated)
    graph = model.subgraphs[0]
    producers = {int(out): op for op in graph.operators for out in op.outputs}
    nodes, shapes = [], []
    for output in graph.outputs:
        op = producers.get(int(output))
        while op is not None and _op_name(model, op) in _HEAD_TAIL_OPS:
            nodes.append(_tensor_name(graph, op.outputs[0]))
            op = producers.get(int(op.inputs[0]))
        if op is None or _op_name(model, op) != "CONV_2D":
            raise ValueError(f"every model output must come from a head convolution, but "
                             f"{_tensor_name(graph, output)!r} does not.")
        nodes.append(_tensor_name(graph, op.outputs[0]))
        shapes.append(tuple(int(d) for d in graph.tensors[op.outputs[0]].shape[1:]))
    if sorted(shapes) != sorted(tuple(map(int, h)) for h in heads):
        raise ValueError(f"the model's outputs must come from the family's head convolutions {sorted(heads)}, "
                         f"but come from convolutions of shapes {sorted(shapes)}.")
    return tuple(nodes)


def _activation_tensors(graph) -> list[int]:
    """Tensors with a calibrated range (one min, one max), the model's input excepted ([0, 1] by contract)."""
    inputs = {int(i) for i in graph.inputs}
    return [i for i, t in enumerate(graph.tensors)
            if i not in inputs and t.quantization is not None and t.quantization.min is not None
            and len(t.quantization.min) == 1]


def with_percentile_ranges(calibrated: bytes, images: np.ndarray, *, percentile: float = PERCENTILE) -> bytes:
    """``calibrated`` with each activation's range at its ``100 - percentile`` / ``percentile`` percentiles
    over ``images`` (the float model run by LiteRT's builtin kernels, every tensor kept)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model(calibrated)
    graph = model.subgraphs[0]
    tensors = _activation_tensors(graph)
    interpreter = Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    rng = np.random.default_rng(0)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in tensors}
    for image in images:
        interpreter.set_tensor(detail["index"], image[None].astype(np.float32))
        interpreter.invoke()
        for i in tensors:
            values = interpreter.get_tensor(i).ravel()
            drawn = values[rng.integers(0, values.size, SAMPLES_PER_IMAGE)] if values.size > SAMPLES_PER_IMAGE else values
            samples[i].append(np.concatenate([drawn, [values.min(), values.max()]]).astype(np.float32))
    for i in tensors:
        low, high = np.percentile(np.concatenate(samples[i]), [100.0 - percentile, percentile])
        q = graph.tensors[i].quantization
        # Never narrower than zero on either side: int8 must hold 0 exactly (padding, ReLU-like ops).
        q.min, q.max = np.array([min(float(low), 0.0)], np.float32), np.array([max(float(high), 0.0)], np.float32)
    return flatbuffer_utils.convert_object_to_bytearray(model)


def with_int8_kernels(content: bytes, *, nodes: Sequence[str]) -> bytes:
    """``content`` with the float kernels of the CONV_2D ops making ``nodes`` stored as symmetric int8,
    one scale per output channel: TFLite then runs them as dynamic-range (hybrid) convolutions."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model(content)
    graph = model.subgraphs[0]
    wanted = set(nodes)
    for op in graph.operators:
        if _op_name(model, op) != "CONV_2D" or _tensor_name(graph, op.outputs[0]) not in wanted:
            continue
        kernel = graph.tensors[op.inputs[1]]
        if kernel.type != schema.TensorType.FLOAT32:
            raise ValueError(f"kernel of {_tensor_name(graph, op.outputs[0])!r} must be float32 to store as int8, "
                             f"but got type {kernel.type}.")
        buffer = model.buffers[kernel.buffer]
        weights = np.frombuffer(bytes(bytearray(buffer.data)), dtype=np.float32).reshape(kernel.shape)
        scale = np.abs(weights.reshape(len(weights), -1)).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(weights / scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
        buffer.data = quantized.ravel().view(np.uint8)
        kernel.type = schema.TensorType.INT8
        kernel.quantization = schema.QuantizationParametersT()
        kernel.quantization.scale = scale.astype(np.float32)
        kernel.quantization.zeroPoint = np.zeros(len(scale), dtype=np.int64)
        kernel.quantization.quantizedDimension = 0
    return flatbuffer_utils.convert_object_to_bytearray(model)


def _outputs(content: bytes, images: np.ndarray) -> list[list[np.ndarray]]:
    """The model's outputs for each image (LiteRT, its default delegate), smallest head first."""
    from search.tflite_model import load_interpreter

    interpreter = load_interpreter(content)
    (detail,) = interpreter.get_input_details()
    heads = sorted(interpreter.get_output_details(), key=lambda o: int(np.prod(o["shape"])))  # any model's order
    outputs = []
    for image in images:
        interpreter.set_tensor(detail["index"], image[None].astype(np.float32))
        interpreter.invoke()
        outputs.append([interpreter.get_tensor(o["index"]).astype(np.float64) for o in heads])
    return outputs


def head_error(content: bytes, reference: list[list[np.ndarray]], images: np.ndarray) -> float:
    """Mean over images and heads of the outputs' squared error relative to the reference's mean square."""
    errors = [np.mean((got - want) ** 2) / max(np.mean(want ** 2), 1e-12)
              for outputs, wanted in zip(_outputs(content, images), reference) for got, want in zip(outputs, wanted)]
    return float(np.mean(errors))


def _conv_layers(calibrated: bytes) -> list[tuple[str, ...]]:
    """Each convolution with the activation that alone reads it (a Darknet layer), as output tensor names."""
    model = _model(calibrated)
    graph = model.subgraphs[0]
    consumers: dict[int, list] = {}
    for op in graph.operators:
        for i in op.inputs:
            consumers.setdefault(int(i), []).append(op)
    layers = []
    for op in graph.operators:
        if _op_name(model, op) != "CONV_2D":
            continue
        out = int(op.outputs[0])
        readers = consumers.get(out, [])
        names = [_tensor_name(graph, out)]
        if len(readers) == 1 and _op_name(model, readers[0]) in _ACTIVATION_OPS:
            names.append(_tensor_name(graph, readers[0].outputs[0]))
        layers.append(tuple(names))
    return layers


def rank_by_head_error(calibrated: bytes, images: np.ndarray) -> list[tuple[tuple[str, ...], float]]:
    """Every conv layer (``_conv_layers``) with the heads' error when it alone stays float, lowest first.

    The detector's own measure of a layer's damage: how close to float the model's outputs come
    with that layer in float (on ``HEAD_ERROR_IMAGES`` of ``images``), not the layer's own rounding.
    """
    images = images[:HEAD_ERROR_IMAGES]
    reference = _outputs(calibrated, images)  # the calibrated model still computes in float
    scored = [(nodes, head_error(quantize(calibrated, float_nodes=nodes), reference, images))
              for nodes in _conv_layers(calibrated)]
    return sorted(scored, key=lambda pair: pair[1])


class _ChannelMeans:
    """A layer metric for QuantizationDebugger that keeps each call's per-channel mean of the diffs.

    The debugger averages every metric to one number per op; bias correction needs a number per
    output channel, so this records them in call order (op after op, in ``layer_statistics``'
    order, image after image) and returns 0 to the debugger.
    """

    def __init__(self):
        self.calls: list[np.ndarray] = []

    def __call__(self, diffs: np.ndarray) -> float:
        diffs = np.asarray(diffs, dtype=np.float64)
        self.calls.append(diffs.reshape(-1, diffs.shape[-1]).mean(axis=0) if diffs.ndim else diffs.reshape(1))
        return 0.0

    def by_tensor(self, names: list[str]) -> dict[str, np.ndarray]:
        if not names or len(self.calls) % len(names):
            raise ValueError(f"the debugger must call the metric once per op and image, but got {len(self.calls)} "
                             f"calls for {len(names)} ops.")
        return {name: np.mean(self.calls[i::len(names)], axis=0) for i, name in enumerate(names)}


def channel_mean_errors(calibrated: bytes, images: np.ndarray, *, float_nodes: Sequence[str]) -> dict[str, np.ndarray]:
    """Each quantized op's own error (int8 output minus float output on the same int8 input, TFLite's
    NumericVerify), averaged per output channel over ``BIAS_IMAGES`` of ``images``, by output tensor;
    ``calibrated`` quantized as ``quantize`` does, so the errors are those of the file's ranges."""
    from search.compat import tf

    images = images[:BIAS_IMAGES]

    def dataset():
        for image in images:
            yield [image[None]]

    means = _ChannelMeans()
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=quantize(calibrated, float_nodes=float_nodes, numeric_verify=True),
        debug_dataset=dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(layer_debug_metrics={"channel_mean": means}))
    debugger.run()
    return means.by_tensor([_verified_tensor(name) for name in debugger.layer_statistics])


def _verified_tensor(numeric_verify_name: str) -> str:
    """``NumericVerify/<tensor><digit>:<index>`` -> ``<tensor>``, the op output it checks (as the
    debugger's own ``_get_operand_name_and_index`` reads it: the converter appends one digit)."""
    name = numeric_verify_name.rsplit(":", 1)[0].removeprefix("NumericVerify/")
    return name[:-1] if name[-1:].isdigit() else name


def with_corrected_biases(content: bytes, errors: dict[str, np.ndarray]) -> bytes:
    """``content`` with each int8 CONV_2D's int32 bias lowered by its mean output error per channel
    (``channel_mean_errors``), so the convolution is unbiased against float on the images."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model(content)
    graph = model.subgraphs[0]
    for op in graph.operators:
        name = _tensor_name(graph, op.outputs[0])
        if _op_name(model, op) != "CONV_2D" or name not in errors or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        bias = graph.tensors[op.inputs[2]]
        if bias.type != schema.TensorType.INT32:
            continue  # a float conv (kept out of int8) has nothing to correct
        buffer = model.buffers[bias.buffer]
        scale = np.asarray(bias.quantization.scale, dtype=np.float64)
        values = np.frombuffer(bytes(bytearray(buffer.data)), dtype=np.int32).astype(np.int64)
        values -= np.round(np.broadcast_to(errors[name], values.shape) / scale).astype(np.int64)
        buffer.data = np.clip(values, -(2**31), 2**31 - 1).astype(np.int32).view(np.uint8)
    return flatbuffer_utils.convert_object_to_bytearray(model)
