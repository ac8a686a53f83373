"""The int8 recipes (strategies.recipe, strategies.selective_by_heads): each converts a real
YOLOv4-tiny at 64 px, passes its audit with exactly the ops it may keep out of int8, has its error
report, and a recipe that keeps an op its row does not allow is caught.

Each conversion costs ~5 s (25 s for int8_selective_heads, which quantizes once per conv), so
``make test-fast`` converts three: int8, int8_float_heads (float kernels) and the recipe made of
every other piece (int8 kernels in the heads, percentile ranges, bias correction); the other
recipes' cases are ``slow``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from search.errors import ConversionError
from search.models import get_family
from search.quantize import (QUANT_MODES, REPORT_MODES, audit, convert, layer_error_report, recipes, strategies,
                             write_layer_report)
from search.tflite_model import TFLiteDetector

FAMILY = get_family("yolov4_tiny")
RECIPE_MODES = [name for name, spec in QUANT_MODES.items()
                if spec.strategy in (strategies.recipe, strategies.selective_by_heads)]
HEAD_MODES = [name for name in RECIPE_MODES if QUANT_MODES[name].keeps_heads]
FLOAT_LAYERS = 2
ALL_IN_ONE = "int8_dynamic_heads_percentile_bias_corrected"  # every recipe step but float kernels and selection
FAST_MODES = ("int8_float_heads", ALL_IN_ONE)


def _modes(names: list[str]) -> list:
    """``names`` as parameters, those outside FAST_MODES marked slow."""
    return [name if name in FAST_MODES else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _convert(model, images, mode):
    spec = QUANT_MODES[mode]
    return convert(model, mode=mode, calibration_images=images[:16], head_layers=FAMILY.head_layers(model),
                   float_layers=FLOAT_LAYERS if spec.selective else 0)


@pytest.fixture(scope="module")
def converted(model, images):
    """``converted(mode)``: the mode's ConvertedModel (``model``, ``images``: conftest.py), made once,
    and only when a test that runs asks for it."""
    made = {}

    def get(mode: str):
        if mode not in made:
            made[mode] = _convert(model, images, mode)
        return made[mode]

    return get


def _relative_error(model, content, image) -> float:
    reference = [head.numpy()[0] for head in model(image[None], training=False)]
    heads = TFLiteDetector(content)(image)
    return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(heads, reference))


def test_the_table_has_the_recipes():
    assert {"int8_float_heads", "int8_dynamic_heads", "int8_percentile", "int8_selective_heads"} <= set(RECIPE_MODES)
    assert FAMILY.head_layers(None) == ("conv_29", "conv_36")  # read from the cfg's [yolo] sections
    assert set(FAST_MODES) <= set(RECIPE_MODES)


@pytest.mark.parametrize("mode", _modes(RECIPE_MODES))
def test_every_recipe_converts_and_passes_its_audit(converted, mode):
    result, spec = converted(mode), QUANT_MODES[mode]
    assert result.audit.passed, result.audit.problems
    assert result.audit.summary().startswith(f"pass {mode}")
    assert result.audit.op_counts["CONV_2D"] == 21
    assert result.audit.activation_dtype == "INT8"  # everything the row does not keep
    assert result.audit.input_dtypes == ("FLOAT32",) and result.audit.output_dtypes == ("FLOAT32",) * 2
    assert sorted(result.audit.float_layers) == sorted(result.float_layers)
    assert len(result.audit.kept_ops) == len(result.float_layers)
    if spec.keeps == "none":
        assert result.float_layers == () and result.audit.weight_dtypes == {"INT8": 21}


@pytest.mark.parametrize("mode", _modes(HEAD_MODES))
def test_head_recipes_keep_exactly_the_two_output_convs(converted, mode):
    result, spec = converted(mode), QUANT_MODES[mode]
    kept = spec.kept_weight_dtype
    assert len(result.float_layers) == 2  # one conv per [yolo] head, nothing else
    assert all(op.startswith("CONV_2D ") and op.endswith(f" [activations FLOAT32, weights {kept}]")
               for op in result.audit.kept_ops), result.audit.kept_ops
    assert f"float 2: CONV_2D" in result.audit.summary()
    # Float heads store two float kernels; dynamic-range heads store all 21 as int8.
    assert result.audit.weight_dtypes == ({"INT8": 19, "FLOAT32": 2} if kept == "FLOAT32" else {"INT8": 21})
    assert result.audit.op_counts.get("DEQUANTIZE") == 2  # into the heads; their outputs are float already


@pytest.mark.parametrize("mode", _modes(HEAD_MODES))
def test_head_recipes_outputs_are_not_on_an_int8_grid(model, converted, images, mode):
    """What keeping the heads buys: box offsets and logits no longer share 256 levels per head.
    (Closer to float on real weights: benchmarks/int8_recipes.py; random weights show nothing.)"""
    image = images[16]  # not among the calibration images
    int8_head, head = (max(TFLiteDetector(c.content)(image), key=np.size) for c in (converted("int8"), converted(mode)))
    assert head.size == 384  # 4 x 4 cells x 24 channels at 64 px: more values than int8 has levels
    assert len(np.unique(int8_head)) <= 256 < len(np.unique(head)), (len(np.unique(int8_head)), len(np.unique(head)))
    print(f"relative error: int8 {_relative_error(model, converted('int8').content, image):.4f}, "
          f"{mode} {_relative_error(model, converted(mode).content, image):.4f}")


def _activation_scales(content: bytes) -> dict[str, float]:
    """Each int8 activation tensor's scale (one per tensor: kernels have one per channel), by name."""
    from tensorflow.lite.python import schema_py_generated as schema

    graph = recipes._model(content).subgraphs[0]
    return {t.name.decode(): float(t.quantization.scale[0]) for t in graph.tensors
            if t.type == schema.TensorType.INT8 and t.quantization is not None and t.quantization.scale is not None
            and len(t.quantization.scale) == 1}


def test_percentile_ranges_narrow_the_calibrators_ranges(converted):
    """Percentile ranges clip each activation's outliers: no int8 scale grows, most shrink. (With
    min / max ranges every scale stays int8's, bias correction and int8 head kernels included: the
    slow test below.)"""
    minmax, percentile = _activation_scales(converted("int8").content), _activation_scales(converted(ALL_IN_ONE).content)
    assert set(percentile) <= set(minmax) and len(percentile) >= len(minmax) - 2  # the two heads left int8
    assert all(percentile[name] <= minmax[name] * (1 + 1e-6) for name in percentile)
    assert sum(percentile[name] < 0.999 * minmax[name] for name in percentile) > len(percentile) // 2


@pytest.mark.slow
def test_percentile_ranges_change_the_model_but_not_its_kind(converted):
    assert converted("int8_percentile").content != converted("int8").content
    assert audit(converted("int8_percentile").content, mode="int8").passed  # same kind of file
    int8, minmax_heads = (_activation_scales(converted(m).content) for m in ("int8", "int8_dynamic_heads_bias_corrected"))
    assert {name: int8[name] for name in minmax_heads} == pytest.approx(minmax_heads, rel=1e-6)


def test_audit_tells_head_recipes_from_int8_and_from_each_other(converted):
    float_heads, dynamic_heads = converted("int8_float_heads"), converted(ALL_IN_ONE)
    as_int8 = audit(float_heads.content, mode="int8")
    assert not as_int8.passed and any("FLOAT32" in p for p in as_int8.problems)
    wrong_kernels = audit(dynamic_heads.content, mode="int8_float_heads", float_layers=dynamic_heads.float_layers)
    assert not wrong_kernels.passed
    assert "kept out of int8 with a INT8 kernel, but int8_float_heads keeps FLOAT32 kernels" in wrong_kernels.problems[0]
    no_heads = audit(converted("int8").content, mode="int8_float_heads")
    assert not no_heads.passed and "is not made by a kept head op" in no_heads.problems[0]


@pytest.mark.slow  # a conversion of its own
def test_a_recipe_keeping_an_op_its_row_does_not_allow_is_caught(model, images, monkeypatch):
    """The broken recipe: heads kept in float, and one backbone conv too."""
    found = recipes.head_nodes

    def heads_and_a_backbone_conv(calibrated, heads):
        flatbuffer = recipes._model(calibrated)
        graph = flatbuffer.subgraphs[0]
        first_conv = next(op for op in graph.operators if recipes._op_name(flatbuffer, op) == "CONV_2D")
        return (*found(calibrated, heads), recipes._tensor_name(graph, first_conv.outputs[0]))

    monkeypatch.setattr(recipes, "head_nodes", heads_and_a_backbone_conv)
    with pytest.raises(ConversionError, match=r"int8_float_heads audit failed: CONV_2D .* is kept out of int8 but "
                                              r"feeds the network; int8_float_heads keeps only the detection-output ops"):
        _convert(model, images, "int8_float_heads")


def test_head_recipes_need_the_family_heads(model, images):
    with pytest.raises(ValueError, match="head_layers must name the family's detection-output convs"):
        convert(model, mode="int8_float_heads", calibration_images=images[:4])
    with pytest.raises(ValueError, match="head_layers must be layers of model .* but got conv_99"):
        convert(model, mode="int8_float_heads", calibration_images=images[:4], head_layers=("conv_99",))


@pytest.mark.slow  # found after calibrating: a conversion of its own
def test_head_recipes_need_convs_shaped_as_the_outputs(model, images):
    with pytest.raises(ConversionError, match=r"must come from the family's head convolutions"):
        convert(model, mode="int8_float_heads", calibration_images=images[:4], head_layers=("conv_0", "conv_1"))


@pytest.mark.slow
def test_selective_by_heads_keeps_the_ops_that_help_the_heads_most(model, converted, images):
    result = converted("int8_selective_heads")
    # Each layer is its conv and its activation, except a head conv (linear: no activation op).
    assert FLOAT_LAYERS <= len(result.float_layers) <= 2 * FLOAT_LAYERS and result.audit.passed
    image = images[16]
    assert _relative_error(model, result.content, image) <= 1.05 * _relative_error(model, converted("int8").content, image)
    zero = convert(model, mode="int8_selective_heads", calibration_images=images[:4])
    assert zero.float_layers == () and audit(zero.content, mode="int8").passed


def test_every_recipe_has_its_error_report():
    # The export writes quant_errors.csv for REPORT_MODES; the report itself (the debugger's int8
    # error per op) is the same for every calibrated int8 mode: test_quant_debug.py checks it.
    assert set(RECIPE_MODES) <= set(REPORT_MODES)


@pytest.mark.slow
def test_a_recipe_s_error_report_is_written(model, images, tmp_path):
    report = layer_error_report(model, calibration_images=images[:8], mode=ALL_IN_ONE)
    written = write_layer_report(report, tmp_path / "quant_errors.csv")
    lines = written.read_text().splitlines()
    assert len(lines) == len(report) + 1 and sum(row["op"] == "CONV_2D" for row in report) == 21


def test_a_row_must_keep_heads_through_the_recipe_strategy():
    with pytest.raises(ValueError, match="strategy must be recipe"):
        replace(QUANT_MODES["int8_float_heads"], name="x", strategy=strategies.plain)


def test_bias_correction_moves_each_conv_bias_by_its_mean_error(converted):
    """With errors of k output steps per channel, the int32 bias drops by exactly k bias steps."""
    from tensorflow.lite.python import schema_py_generated as schema

    content = converted("int8").content
    model = recipes._model(content)
    graph = model.subgraphs[0]
    conv = next(op for op in graph.operators if recipes._op_name(model, op) == "CONV_2D")
    bias = graph.tensors[conv.inputs[2]]
    assert bias.type == schema.TensorType.INT32
    name = recipes._tensor_name(graph, conv.outputs[0])
    steps = np.arange(len(bias.quantization.scale)) % 3  # 0, 1 or 2 bias steps per channel
    corrected = recipes.with_corrected_biases(content, {name: steps * np.asarray(bias.quantization.scale)})

    def biases(blob):
        m = recipes._model(blob)
        t = m.subgraphs[0].tensors[conv.inputs[2]]
        return np.frombuffer(bytes(bytearray(m.buffers[t.buffer].data)), dtype=np.int32)

    np.testing.assert_array_equal(biases(content) - biases(corrected), steps)
    assert audit(corrected, mode="int8").passed
