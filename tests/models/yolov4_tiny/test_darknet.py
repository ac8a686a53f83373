"""Darknet cfg/weights import of the stock network: round trip, file layout, every bad weights file,
and parity with OpenCV.

The parity test runs the official weights on Darknet's dog photo, in Keras and in float32 TFLite,
and compares with the detections OpenCV's own test suite publishes for exactly those weights.
(What any cfg may say, and the parity of every family cfg with OpenCV's importer, are tested in
``tests/models/darknet``.)
"""

from pathlib import Path

import numpy as np
import pytest

from search.compat import tf
from search.errors import WeightsError
from search.models import get_family
from search.models.decode import detect
from search.models.yolov4_tiny.builder import build_yolov4_tiny
from search.models.yolov4_tiny.constants import ANCHORS
from search.models.darknet.cfg import parse_cfg as read_cfg
from search.models.darknet.network import read_network
from search.models.yolov4_tiny.darknet import (
    check_darknet_files,
    load_darknet_model,
    load_darknet_weights,
    parse_cfg,
    save_darknet_weights,
    yolov4_tiny_cfg_text,
)


def _real_dir() -> Path:
    return Path(__file__).resolve().parents[4] / "shared" / "real"


needs_real = pytest.mark.skipif(
    not (_real_dir() / "darknet" / "yolov4-tiny.weights").is_file(),
    reason=f"official Darknet weights not found under {_real_dir()} (../shared/real is absent)",
)

HEADER_BYTES = 20  # int32 major, minor, revision + int64 seen


def _randomized(model, seed):
    """Give every weight, BN statistics included, distinct random values, so no swap goes unseen."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name.startswith("bn_"):
            gamma, beta, mean, variance = (w.shape for w in weights)
            weights = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta),
                       rng.normal(0, 0.1, mean), rng.uniform(0.5, 1.5, variance)]  # fmt: skip
        else:
            weights = [rng.normal(0, 0.1, w.shape) for w in weights]
        layer.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def saved_two_class(tmp_path_factory):
    """A random 2-class model at 64 px and its Darknet weights file."""
    model = _randomized(build_yolov4_tiny(num_classes=2, resolution=64), seed=1)
    path = tmp_path_factory.mktemp("darknet") / "two_class.weights"
    save_darknet_weights(model, path)
    return model, path


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_round_trip_gives_identical_weights_and_outputs(saved_two_class):
    model, path = saved_two_class
    assert path.stat().st_size == HEADER_BYTES + 4 * model.count_params()
    fresh = _randomized(build_yolov4_tiny(num_classes=2, resolution=64), seed=2)
    load_darknet_weights(fresh, path)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    image = np.random.default_rng(3).random((1, 64, 64, 3), np.float32)
    for a, b in zip(model(image, training=False), fresh(image, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_file_layout_is_darknets(saved_two_class):
    """Beta, gamma, mean, variance, then the kernel as (out, in, kh, kw): a round trip cannot see a swap."""
    model, path = saved_two_class
    raw = path.read_bytes()
    assert np.frombuffer(raw, "<i4", count=3).tolist() == [0, 2, 5]
    floats = np.frombuffer(raw, "<f4", offset=HEADER_BYTES)
    gamma, beta, mean, variance = model.get_layer("bn_0").get_weights()
    np.testing.assert_array_equal(floats[:128].reshape(4, 32), [beta, gamma, mean, variance])
    kernel = model.get_layer("conv_0").get_weights()[0]  # Keras (kh, kw, in, out)
    np.testing.assert_array_equal(floats[128 : 128 + 864].reshape(32, 3, 3, 3), kernel.transpose(3, 2, 0, 1))
    # The last convolution (fine head, no BN) ends the file: bias, then kernel.
    head_kernel, head_bias = model.get_layer("conv_36").get_weights()
    np.testing.assert_array_equal(floats[-head_kernel.size :], head_kernel.transpose(3, 2, 0, 1).reshape(-1))
    np.testing.assert_array_equal(floats[-head_kernel.size - 21 : -head_kernel.size], head_bias)


def test_old_header_with_32_bit_seen_loads(saved_two_class, tmp_path):
    model, path = saved_two_class
    old = tmp_path / "old.weights"
    old.write_bytes(np.asarray([0, 1, 0, 12345], "<i4").tobytes() + path.read_bytes()[HEADER_BYTES:])
    fresh = build_yolov4_tiny(num_classes=2, resolution=64)
    load_darknet_weights(fresh, old)
    np.testing.assert_array_equal(fresh.get_layer("conv_36").get_weights()[0], model.get_layer("conv_36").get_weights()[0])


def _bad_weights(path, tmp_path, *, needed):
    """Bad variants of the good file at ``path``: {name: (file, the error message it must give)}."""
    good = path.read_bytes()
    cases = {
        "truncated": (good[:-400], rf"truncated Darknet weights: .* needs {needed:,} float32 .* holds {needed - 100:,} "),
        "too_long": (good + bytes(4 * 10), rf"wrong size .* needs {needed:,} float32 .* \({needed + 10:,} float32\); is it"),
        "ragged": (good + b"\0\0", r"wrong size"),
        "bad_header": (np.asarray([1234, 5, 6], "<i4").tobytes() + good[12:], r"header version 1234\.5\.6"),
        "tiny": (good[:10], r"shorter than its header"),
        "float_dump": (np.ones(1000, "<f4").tobytes(), r"not a Darknet weights file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.weights").write_bytes(content)
    return {name: (tmp_path / f"{name}.weights", message) for name, (_, message) in cases.items()}


def test_each_bad_weights_file_has_its_error_and_leaves_the_model_untouched(saved_two_class, tmp_path):
    model, path = saved_two_class
    target = build_yolov4_tiny(num_classes=2, resolution=64)
    before = _weights(target)
    for name, (bad, message) in _bad_weights(path, tmp_path, needed=model.count_params()).items():
        with pytest.raises(WeightsError, match=message) as caught:
            load_darknet_weights(target, bad)
        assert "\n" not in str(caught.value) and str(bad) in str(caught.value), name
    for a, b in zip(before, target.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsError, match="weights file not found: .*missing.weights"):
        load_darknet_weights(target, tmp_path / "missing.weights")


def test_weights_for_another_class_count_say_which(tmp_path):
    three = tmp_path / "three.weights"
    save_darknet_weights(build_yolov4_tiny(num_classes=3, resolution=64), three)
    with pytest.raises(WeightsError, match="at 2 classes .* that size fits 3 classes"):
        load_darknet_weights(build_yolov4_tiny(num_classes=2, resolution=64), three)
    with pytest.raises(WeightsError, match="truncated .* at 5 classes"):
        load_darknet_weights(build_yolov4_tiny(num_classes=5, resolution=64), three)


def test_written_cfg_passes_the_check_and_loads_with_its_weights(saved_two_class, tmp_path):
    model, path = saved_two_class
    cfg = tmp_path / "two.cfg"
    cfg.write_text(yolov4_tiny_cfg_text(num_classes=2, resolution=64))
    heads = read_network(read_cfg(cfg)).heads()
    assert heads == get_family("yolov4_tiny").heads(2) and heads.anchors == ANCHORS
    assert [s["type"] for s in parse_cfg(cfg)][:3] == ["net", "convolutional", "convolutional"]
    loaded, num_classes = load_darknet_model(cfg, path, resolution=96)  # weights do not depend on resolution
    assert num_classes == 2 and loaded.outputs[1].shape[1] == 6
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checking_files_imports_no_tensorflow(saved_two_class, tmp_path):
    """What ``python -m search validate`` runs: the cfg and weights checks, without TensorFlow."""
    import subprocess
    import sys

    _, path = saved_two_class
    cfg = tmp_path / "two.cfg"
    cfg.write_text(yolov4_tiny_cfg_text(num_classes=2, resolution=64))
    code = (
        "import sys; from search.models import get_family; "
        f"print(get_family('yolov4_tiny').check_files({str(cfg)!r}, {str(path)!r})); "
        "print('tensorflow' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout.split()
    assert out == ["2", "False"]
    assert check_darknet_files(cfg, path) == 2


def test_missing_cfg_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="cfg file not found: .*nope.cfg"):
        load_darknet_model(tmp_path / "nope.cfg", tmp_path / "nope.weights", resolution=64)


# ---- parity with OpenCV's published detections (real files) ----

# OpenCV's test_darknet_importer.cpp, YOLOv4_tiny, batch 0 (dog): class, score, (left, top, right, bottom).
OPENCV_DOG = {
    16: (0.889883, (0.177204, 0.356279, 0.417204, 0.937517)),  # dog
    7: (0.816615, (0.604293, 0.137345, 0.918016, 0.295708)),  # truck
    1: (0.595912, (0.0940107, 0.178122, 0.750619, 0.829336)),  # bicycle
}


def _resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's ``INTER_LINEAR`` stretch (half-pixel centres, no antialiasing) of a uint8 image.

    Not PIL's ``BILINEAR``: on a downscale PIL widens its filter (antialiasing), which moves the
    truck's two near-tied candidate boxes (0.8162 vs 0.8122) past each other, and NMS then keeps
    the other one (IoU 0.87 to OpenCV's). OpenCV's resize keeps the box OpenCV reports.
    """
    height, width = image.shape[:2]

    def taps(n_in):
        source = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, n_in - 1), (source - low).astype(np.float32)

    y0, y1, wy = taps(height)
    x0, x1, wx = taps(width)
    pixels = image.astype(np.float32)
    wx = wx[None, :, None]
    rows = [pixels[y][:, x0] * (1 - wx) + pixels[y][:, x1] * wx for y in (y0, y1)]
    stretched = rows[0] * (1 - wy)[:, None, None] + rows[1] * wy[:, None, None]
    return np.round(stretched).astype(np.uint8)


def _iou(a, b):
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return inter / (np.prod(np.subtract(a[2:], a[:2])) + np.prod(np.subtract(b[2:], b[:2])) - inter)


def _assert_matches_opencv(outputs, label):
    heads = get_family("yolov4_tiny").heads(80)
    found = detect(outputs, heads=heads, resolution=416, score_threshold=0.5, iou_threshold=0.4, max_detections=100,
                   multi_label=False)
    assert sorted(found.classes.tolist()) == sorted(OPENCV_DOG), label
    for cls, score, box in zip(found.classes, found.scores, found.boxes):
        reference_score, reference_box = OPENCV_DOG[int(cls)]
        iou = _iou(box, np.asarray(reference_box))
        print(f"{label}: class {cls} score {score:.4f} (OpenCV {reference_score}) IoU {iou:.4f}")
        assert iou >= 0.98, (label, int(cls), iou)
        assert abs(score - reference_score) <= 0.03, (label, int(cls), score)


@pytest.mark.slow
@pytest.mark.real
@needs_real
def test_official_weights_find_opencvs_detections_in_keras_and_tflite():
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    real = _real_dir()
    model, num_classes = load_darknet_model(
        real / "darknet" / "yolov4-tiny.cfg", real / "darknet" / "yolov4-tiny.weights", resolution=416
    )
    assert num_classes == 80 and model.count_params() == 6_062_814
    photo = np.asarray(Image.open(real / "images" / "dog.jpg").convert("RGB"))
    image = (_resize_bilinear(photo, 416).astype(np.float32) / 255.0)[None]

    _assert_matches_opencv([o.numpy() for o in model(image, training=False)], "keras")

    interpreter = Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    # The converter may reorder outputs: find coarse (13x13) and fine (26x26) by grid size.
    by_grid = {d["shape"][1]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    _assert_matches_opencv([by_grid[13], by_grid[26]], "tflite")
