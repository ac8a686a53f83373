"""Every quantization mode converts a real YOLOv4-tiny and passes its audit; wrong models fail it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import search
from search.compat import keras, tf
from search.errors import ConversionError, SpaceError
from search.quantize import QUANT_MODES, ConverterRequest, audit, convert, get_mode, strategies
from search.tflite_model import TFLiteDetector

# Modes a converter setting makes from a float model (the plain strategy). qat_int8 (a QAT model),
# int8_selective (float_layers) and the int8 recipes have their own tests: tests/test_qat.py,
# tests/quantize/test_quant_debug.py, tests/quantize/test_recipes.py.
PLAIN_MODES = [name for name, spec in QUANT_MODES.items() if not spec.needs_qat and spec.strategy is strategies.plain]


@pytest.fixture(scope="module")
def converted(model, images):
    """Every mode converted once (``model``, ``images``: conftest.py); calibration on the first 16 images,
    the 17th kept for checks."""
    return {
        mode: convert(model, mode=mode, calibration_images=images[:16] if spec.needs_calibration else None)
        for mode, spec in QUANT_MODES.items()
        if mode in PLAIN_MODES
    }


def _keras_heads(model, image):
    return [head.numpy()[0] for head in model(image[None], training=False)]


@pytest.mark.parametrize("mode", PLAIN_MODES)
def test_every_mode_converts_and_passes_its_audit(converted, mode):
    result = converted[mode]
    spec = QUANT_MODES[mode]
    assert result.mode == mode and result.audit.passed, result.audit.problems
    assert result.audit.summary().startswith(f"pass {mode}")
    assert result.audit.op_counts["CONV_2D"] == 21  # every Darknet convolution survived conversion
    assert result.audit.activation_dtype == spec.activation_dtype
    assert result.audit.input_dtypes == ("FLOAT32",) and result.audit.output_dtypes == ("FLOAT32",) * 2
    # The head convolutions (256 / 512 inputs x 24 outputs) are big enough for every mode to quantize.
    assert result.audit.weight_dtypes.get(spec.weight_dtype, 0) >= 20
    assert result.calibration_size == (16 if spec.needs_calibration else 0)
    assert (result.calibration_seconds > 0) == spec.needs_calibration
    assert result.convert_seconds > result.calibration_seconds


def test_sizes_shrink_with_weight_precision(converted):
    size = {mode: len(result.content) for mode, result in converted.items()}
    assert size["float16"] < 0.55 * size["float32"]
    assert size["int8"] < 0.3 * size["float32"]
    assert size["dynamic_range"] < 0.3 * size["float32"]
    assert size["int8"] < size["float16"] < size["float32"]


def test_float32_matches_keras_and_quantized_modes_follow_it(model, converted, images):
    image = images[16]  # not among the calibration images
    reference = _keras_heads(model, image)
    worst_error = {}
    # Measured on this model: correlation >= 0.9993 for every mode, relative error int8 3.6%,
    # dynamic_range 2.3%, int16x8 1.4%, float16 0.08%.
    closeness_by_mode = {"float32": 0.99999, "float16": 0.9999, "int16x8": 0.999, "dynamic_range": 0.995, "int8": 0.99}
    for mode, closeness in closeness_by_mode.items():
        heads = TFLiteDetector(converted[mode].content)(image)
        for got, want in zip(heads, reference):
            assert got.shape == want.shape
            correlation = np.corrcoef(got.ravel(), want.ravel())[0, 1]
            assert correlation > closeness, (mode, correlation)
        worst_error[mode] = max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(heads, reference))
    assert worst_error["float32"] < 1e-4
    # What int16x8 is for: closer to float than int8, at the same weight size.
    assert worst_error["float16"] < worst_error["int16x8"] < worst_error["int8"]


def test_int8_io_model_has_int8_tensors_at_both_ends(model, images):
    result = convert(model, mode="int8", calibration_images=images[:4], int8_io=True)
    assert result.audit.passed and result.int8_io
    assert result.audit.input_dtypes == ("INT8",) and result.audit.output_dtypes == ("INT8", "INT8")
    assert "DEQUANTIZE" not in result.audit.op_counts  # nothing goes back to float
    # The same file does not pass as a float-I/O int8 model.
    assert not audit(result.content, mode="int8").passed


@pytest.mark.parametrize("impostor", ["float32", "float16", "dynamic_range", "int16x8"])
def test_audit_rejects_other_modes_posing_as_int8(converted, impostor):
    result = audit(converted[impostor].content, mode="int8")
    assert not result.passed
    assert any("INT8" in problem for problem in result.problems)


def test_audit_tells_every_mode_from_every_other(converted):
    for claimed in PLAIN_MODES:
        for actual, result in converted.items():
            assert audit(result.content, mode=claimed).passed == (claimed == actual), (claimed, actual)


def _model_with_a_float_only_op():
    """Conv -> sin -> conv: TFLite has no int8 SIN, so the converter leaves it in float."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.Lambda(lambda t: tf.math.sin(t), name="sine")(x)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1)(x))


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")  # the unsilenced recipe below
def test_int8_with_a_float_op_is_caught(images):
    """The users' trap: "int8" settings that leave float ops in the file.

    Even with TFLITE_BUILTINS_INT8 as the only op set the converter keeps SIN in float between a
    DEQUANTIZE and a QUANTIZE and reports success; only reading the flatbuffer shows it.
    """
    model = _model_with_a_float_only_op()
    calibration = images[:4, :16, :16]

    # The usual recipe (Optimize.DEFAULT + representative data, ops not restricted).
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    result = audit(converter.convert(), mode="int8")
    assert not result.passed
    assert result.problems[0].startswith("SIN"), result.problems  # the cause is named first
    assert result.activation_dtype == "mixed(FLOAT32,INT8)"

    # Our own int8 conversion refuses to hand the file over.
    with pytest.raises(ConversionError, match=r"int8 audit failed: SIN .* computes FLOAT32"):
        convert(model, mode="int8", calibration_images=calibration)


def test_convert_refuses_wrong_calibration_arguments(model, images):
    with pytest.raises(ValueError, match="needs calibration images"):
        convert(model, mode="int8")
    with pytest.raises(ValueError, match="takes no calibration images"):
        convert(model, mode="float16", calibration_images=images[:2])
    with pytest.raises(ValueError, match=r"float32 \(n, 64, 64, 3\)"):
        convert(model, mode="int8", calibration_images=images[:2, :32, :32])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        convert(model, mode="int8", calibration_images=images[:2] * 255)
    with pytest.raises(ValueError, match="int8_io applies to mode 'int8' only"):
        convert(model, mode="float32", int8_io=True)


def test_unknown_mode_suggests_the_closest():
    with pytest.raises(SpaceError, match="did you mean 'int8'"):
        get_mode("int9")
    assert get_mode("int16x8").needs_calibration


def test_audit_rejects_bytes_that_are_not_tflite():
    with pytest.raises(ConversionError, match="not a TFLite flatbuffer"):
        audit(b"\x00" * 64, mode="float32")



def test_every_mode_carries_its_request_and_strategy():
    for name, spec in QUANT_MODES.items():
        assert isinstance(spec.request, ConverterRequest), name
        assert callable(spec.strategy), name
    # Only the selective strategies take float_layers, so only their rows ask the search for a count.
    assert [name for name, spec in QUANT_MODES.items() if spec.selective] == ["int8_selective", "int8_selective_heads"]
    assert all(spec.strategy in (strategies.selective, strategies.selective_by_heads)
               for spec in QUANT_MODES.values() if spec.selective)


def test_a_row_that_says_one_thing_and_does_another_is_refused():
    from dataclasses import replace

    with pytest.raises(ValueError, match="keeps must be 'chosen' exactly when the strategy is selective"):
        replace(QUANT_MODES["int8"], name="x", keeps="chosen")
    with pytest.raises(ValueError, match="strategy must be recipe for keeps='heads'"):
        replace(QUANT_MODES["int8"], name="x", keeps="heads")
    with pytest.raises(ValueError, match="ranges must be one of minmax, percentile, but got 'mse'"):
        replace(QUANT_MODES["int8_float_heads"], name="x", ranges="mse")


def test_importing_the_package_imports_neither_tensorflow_nor_the_tflite_schema():
    """The space validator reads QUANT_MODES; a fresh interpreter shows what that costs."""
    code = "import sys, search.quantize; print('tensorflow' in sys.modules, 'ai_edge_litert' in sys.modules)"
    root = Path(search.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"], done.stderr
