"""qat_int8: TFMOT quantization-aware fine-tuning of YOLOv4-tiny, with and without keeping pruned zeros."""

import numpy as np
import pytest

from search.compat import keras
from search.models import get_family
from search.models.yolov4_tiny.builder import build_yolov4_tiny
from search.prune import is_pruned_layer, measured_sparsity
from search.qat import qat_sparsity, quantize_aware_fine_tune
from search.quantize import QUANT_MODES, convert
from search.tflite_model import TFLiteDetector
from tests.helpers import training_set

RESOLUTION = 64
NUM_CLASSES = 2
STEPS = 3
SPARSITY = 0.5
FAMILY = get_family("yolov4_tiny")


@pytest.fixture(scope="module")
def data():
    return training_set(4, resolution=RESOLUTION, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def pruned_model():
    """YOLOv4-tiny with the smaller half of every prunable kernel set to zero (what pruning leaves)."""
    keras.utils.set_random_seed(0)
    model = build_yolov4_tiny(num_classes=NUM_CLASSES, resolution=RESOLUTION)
    for layer in model.layers:
        if is_pruned_layer(layer, dense_layers=FAMILY.dense_layers(model)):
            kernel = layer.kernel.numpy()
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), SPARSITY)] = 0.0
            layer.kernel.assign(kernel)
    assert measured_sparsity(model, dense_layers=FAMILY.dense_layers(model)) == pytest.approx(SPARSITY, abs=0.01)
    return model


@pytest.fixture(scope="module")
def qat_models(pruned_model, data):
    """The pruned model QAT-fine-tuned with prune-preserving QAT and with plain QAT."""
    before = [w.copy() for w in pruned_model.get_weights()]
    models = {
        preserve: quantize_aware_fine_tune(
            pruned_model, heads=FAMILY.heads(NUM_CLASSES), split_layers=FAMILY.channel_split_layers(pruned_model),
            preserve_sparsity=preserve, steps=STEPS, batch_size=2, learning_rate=1e-3, **data,
        )
        for preserve in (True, False)
    }
    assert all(np.array_equal(a, b) for a, b in zip(before, pruned_model.get_weights()))  # input untouched
    return models


def test_prune_preserving_qat_keeps_the_sparsity_plain_qat_loses_it(qat_models, pruned_model):
    dense = FAMILY.dense_layers(pruned_model)
    # The float kernels inside the QAT wrappers: the weights that the converter quantizes.
    assert qat_sparsity(qat_models[True], dense_layers=dense) == pytest.approx(SPARSITY, abs=0.02)
    # Plain QAT: zeros that get a gradient move; measured 0.26 left after 3 steps (from 0.50).
    assert qat_sparsity(qat_models[False], dense_layers=dense) < SPARSITY - 0.1


def test_a_lambda_the_family_does_not_name_as_a_split_is_refused(pruned_model):
    from search.qat import quantize_aware_model

    images = np.zeros((1, RESOLUTION, RESOLUTION, 3), np.float32)
    splits = FAMILY.channel_split_layers(pruned_model)
    with pytest.raises(ValueError, match="another Lambda"):
        quantize_aware_model(pruned_model, split_layers=splits[1:], preserve_sparsity=False, range_images=images)
    with pytest.raises(ValueError, match="must halve the channels, but layer 'conv_0'"):
        quantize_aware_model(pruned_model, split_layers=("conv_0",), preserve_sparsity=False, range_images=images)


def test_qat_int8_converts_to_a_model_that_passes_the_int8_audit(qat_models, data):
    qat_model = qat_models[True]
    result = convert(qat_model, mode="qat_int8")
    assert result.audit.passed, result.audit.problems
    assert result.audit.activation_dtype == "INT8" and result.audit.weight_dtypes == {"INT8": 21}
    assert result.audit.op_counts["CONV_2D"] == 21 and "STRIDED_SLICE" in result.audit.op_counts  # CSP split
    assert result.calibration_size == 0
    # The same file is a valid int8 model too: qat_int8 differs in how it was made, not what it is.
    assert QUANT_MODES["qat_int8"].activation_dtype == QUANT_MODES["int8"].activation_dtype
    # The flatbuffer computes what the fake-quantized Keras model computes.
    image = data["images"][0].astype(np.float32) / 255.0
    reference = [head.numpy()[0] for head in qat_model(image[None], training=False)]
    for got, want in zip(TFLiteDetector(result.content)(image), reference):
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98


def test_qat_int8_refuses_a_float_model(pruned_model):
    with pytest.raises(ValueError, match="has no fake quantization"):
        convert(pruned_model, mode="qat_int8")
