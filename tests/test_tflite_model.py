"""The TFLite runner returns the Keras model's heads, coarse first, for float and int8-I/O files."""

from __future__ import annotations

import numpy as np
import pytest

from search.compat import keras
from search.models.yolov4_tiny.builder import head_channels
from search.quantize import convert
from search.tflite_model import TFLiteDetector
from tests.helpers import random_images, tiny_model

RESOLUTION = 64
NUM_CLASSES = 2
HEAD_SHAPES = [
    (RESOLUTION // 32, RESOLUTION // 32, head_channels(NUM_CLASSES)),  # coarse, stride 32
    (RESOLUTION // 16, RESOLUTION // 16, head_channels(NUM_CLASSES)),  # fine, stride 16
]


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_classes=NUM_CLASSES, resolution=RESOLUTION, seed=1)


@pytest.fixture(scope="module")
def images():
    return random_images(9, resolution=RESOLUTION, seed=1)


def _keras_heads(model, image):
    return [head.numpy()[0] for head in model(image[None], training=False)]


def test_float_model_returns_the_keras_heads_coarse_first(model, images, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(convert(model, mode="float32").content)
    detector = TFLiteDetector(path, num_threads=1)  # from a file, as the exporter's user would
    assert detector.resolution == RESOLUTION
    heads = detector(images[0])
    assert [h.shape for h in heads] == HEAD_SHAPES
    assert all(h.dtype == np.float32 for h in heads)
    for got, want in zip(heads, _keras_heads(model, images[0])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_int8_io_model_is_quantized_in_and_dequantized_out(model, images):
    detector = TFLiteDetector(convert(model, mode="int8", calibration_images=images[:8], int8_io=True).content)
    heads = detector(images[8])
    assert [h.shape for h in heads] == HEAD_SHAPES
    assert all(h.dtype == np.float32 for h in heads)
    for got, want in zip(heads, _keras_heads(model, images[8])):
        # Dequantized to the float scale: a missing scale / zero point would be off by orders.
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
        assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_heads_are_found_by_grid_size_not_output_order(model, images):
    fine_first = keras.Model(model.input, model.outputs[::-1])
    heads = TFLiteDetector(convert(fine_first, mode="float32").content)(images[0])
    assert [h.shape for h in heads] == HEAD_SHAPES
    np.testing.assert_allclose(heads[0], _keras_heads(model, images[0])[0], rtol=1e-4, atol=1e-4)


def test_wrong_image_shape_is_refused(model):
    detector = TFLiteDetector(convert(keras.Model(model.input, model.outputs), mode="float32").content)
    with pytest.raises(ValueError, match=r"image must have shape \(64, 64, 3\)"):
        detector(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        TFLiteDetector(b"", num_threads=0)
