"""Parity with an oracle no one here wrote: OpenCV's own Darknet importer (``cv2.dnn.readNetFromDarknet``).

For each cfg, at two small resolutions and 3 classes, a model with random weights is written as
Darknet cfg + weights and read by OpenCV; the raw head outputs (the layer feeding each ``[yolo]``,
so OpenCV's YOLO layer cannot zero any score below its ``thresh``) of our Keras model and of our
float32 TFLite agree with OpenCV's to 1e-4. The residual (~2e-5 at outputs near 1) is OpenCV's
batch-norm epsilon, 1e-6, where Darknet (and the builder) divide by ``sqrt(var + 1e-5)``. Decoding
is checked against OpenCV's YOLO layer itself, with ``thresh=0`` so that it keeps every score.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from search.models.darknet.builder import build_model
from search.models.darknet.cfg import parse_cfg, parse_cfg_text
from search.models.darknet.network import Yolo, read_network, with_classes
from search.models.darknet.weights import save_darknet_weights
from search.models.decode import decode
from search.models.yolov4_tiny.darknet import yolov4_tiny_cfg_text
from tests.models.darknet.common import ALL_OPTIONS_CFG, family_cfg, family_params, randomized

TOLERANCE = 1e-4
NUM_CLASSES = 3


def _cfg(name: str, resolution: int):
    if name == "generated-yolov4-tiny":
        cfg = parse_cfg_text(yolov4_tiny_cfg_text(num_classes=80), source=name)
    elif name == "all-options":
        cfg = parse_cfg_text(ALL_OPTIONS_CFG, source=name)
    else:
        cfg = parse_cfg(family_cfg(name))
    return with_classes(cfg, NUM_CLASSES).with_net(width=resolution, height=resolution)


def _written(cfg, folder: Path, *, seed: int = 0):
    """(network, Keras model with random weights, cfg path, weights path) for OpenCV to read."""
    network = read_network(cfg)
    model = randomized(build_model(network, resolution=int(cfg.net.options["width"]), name="parity"), seed)
    cfg_path, weights_path = folder / "model.cfg", folder / "model.weights"
    cfg_path.write_text(cfg.text())
    save_darknet_weights(model, weights_path)
    return network, model, cfg_path, weights_path


def _opencv_raw_heads(cfg_path: Path, weights_path: Path, image: np.ndarray) -> list[np.ndarray]:
    """OpenCV's outputs of the layer before each YOLO layer (its ``permute_*``), as NHWC, in cfg order."""
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    names = net.getLayerNames()
    heads = [names[i - 1] for i, name in enumerate(names) if name.startswith("permute_")]
    net.setInput(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    return [output.transpose(0, 2, 3, 1) for output in net.forward(heads)]


def _tflite_heads(model, image: np.ndarray, strides) -> list[np.ndarray]:
    from search.quantize import convert
    from search.tflite_model import TFLiteDetector

    detector = TFLiteDetector(convert(model, mode="float32").content, strides=strides)
    return [head[None] for head in detector(image[0])]


def _check_parity(name: str, resolution: int, folder: Path) -> None:
    network, model, cfg_path, weights_path = _written(_cfg(name, resolution), folder)
    image = np.random.default_rng(1).random((1, resolution, resolution, 3), np.float32)
    reference = _opencv_raw_heads(cfg_path, weights_path, image)
    keras_heads = [output.numpy() for output in model(image, training=False)]
    tflite_heads = _tflite_heads(model, image, network.heads().strides)
    assert len(reference) == len(keras_heads) == len(network.of(Yolo))
    for ours, theirs, tflite in zip(keras_heads, reference, tflite_heads):
        assert ours.shape == theirs.shape == tflite.shape
        assert 0.1 < np.abs(theirs).max() < 10  # values of a size where 1e-4 means something
        print(f"{name} at {resolution}: {ours.shape} keras {np.abs(ours - theirs).max():.2e}, "
              f"tflite {np.abs(tflite - theirs).max():.2e}")
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(tflite, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(("name", "resolution"), [("generated-yolov4-tiny", 64), ("generated-yolov4-tiny", 96),
                                                  ("all-options", 32), ("all-options", 64)])
def test_generated_cfgs_match_opencv(name, resolution, tmp_path):
    _check_parity(name, resolution, tmp_path)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("resolution", [64, 96])
@pytest.mark.parametrize("name", family_params())
def test_family_cfgs_match_opencv(name, resolution, tmp_path):
    _check_parity(name, resolution, tmp_path)


def _check_decode(name: str, folder: Path) -> None:
    """Our decode of our heads against OpenCV's YOLO layer (``thresh=0``): boxes and class scores."""
    resolution = 96
    cfg = _cfg(name, resolution)
    for yolo in read_network(cfg).of(Yolo):
        cfg = cfg.with_layer(yolo.index, thresh=0)  # OpenCV zeroes every score below thresh (0.2 by default)
    network, model, cfg_path, weights_path = _written(cfg, folder)
    image = np.random.default_rng(1).random((1, resolution, resolution, 3), np.float32)
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setInput(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    rows = np.concatenate([o.reshape(-1, 5 + NUM_CLASSES) for o in net.forward(net.getUnconnectedOutLayersNames())])
    boxes, scores = decode([o.numpy() for o in model(image, training=False)], heads=network.heads(), resolution=resolution)
    np.testing.assert_allclose(scores, rows[:, 5:], rtol=0, atol=TOLERANCE)
    inside = ((boxes > 0) & (boxes < 1)).all(axis=1)  # ours are clipped to the image, OpenCV's are not
    assert inside.sum() > 10
    centre_size = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                            boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    np.testing.assert_allclose(centre_size[inside], rows[inside, :4], rtol=0, atol=TOLERANCE)


def test_decode_matches_opencvs_yolo_layer(tmp_path):
    _check_decode("all-options", tmp_path)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("name", family_params())
def test_decode_matches_opencvs_yolo_layer_for_every_family_cfg(name, tmp_path):
    _check_decode(name, tmp_path)  # yolov7-tiny: new_coords and scale_x_y=2; yolov3-tiny: scale_x_y=1
