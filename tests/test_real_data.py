"""Starting from a user's Darknet model and measuring on real data.

Bad model files are tiny (or sparse) files in ``tmp_path``: each must give its one-line error
through the command line before any run directory exists, so those tests need nothing outside the
repository. The rest use ``../shared/real`` (official weights, coco128) and skip without it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from search.cli import main
from search.errors import DataError, SpaceError, WeightsError
from search.inputs import base_model, check_model_files, load_data
from search.models.yolov4_tiny.darknet import darknet_float_count, yolov4_tiny_cfg_text
from search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "spaces" / "smoke.yaml"
COCO_SPACE = ROOT / "spaces" / "yolov4_tiny_coco.yaml"
REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
HEADER = np.asarray([0, 2, 5, 0, 0], "<i4").tobytes()  # major, minor, revision, 64-bit seen

needs_real = pytest.mark.skipif(
    not (REAL / "darknet" / "yolov4-tiny.weights").is_file() or not (REAL / "coco128" / "data.yaml").is_file(),
    reason=f"official weights and coco128 not found under {REAL} (../shared/real is absent)",
)


def _weights_file(path: Path, *, num_classes: int, extra_bytes: int = 0, header: bytes = HEADER) -> Path:
    """A Darknet-sized weights file for ``num_classes``, sparse (zeros are never written)."""
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + 4 * darknet_float_count(num_classes=num_classes) + extra_bytes)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid 2-class cfg and weights, and one bad variant per error: {name: path}."""
    folder = tmp_path_factory.mktemp("model_files")
    cfg = folder / "two.cfg"
    cfg.write_text(yolov4_tiny_cfg_text(num_classes=2))
    not_tiny = folder / "yolov3ish.cfg"
    not_tiny.write_text(yolov4_tiny_cfg_text(num_classes=2).replace("[route]\nlayers=-1,23\n", "[route]\nlayers=-1,8\n"))
    hdf5 = folder / "model.weights"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1000))
    return {
        "cfg": cfg,
        "not_tiny_cfg": not_tiny,
        "good": _weights_file(folder / "good.weights", num_classes=2),
        "truncated": _weights_file(folder / "truncated.weights", num_classes=2, extra_bytes=-400),
        "three_classes": _weights_file(folder / "three.weights", num_classes=3),
        "ragged": _weights_file(folder / "ragged.weights", num_classes=2, extra_bytes=2),
        "bad_header": _weights_file(folder / "bad_header.weights", num_classes=2, header=np.asarray([7, 99, 3, 0, 0], "<i4").tobytes()),
        "hdf5": hdf5,
    }


def test_float_count_is_the_official_files(files):
    """The size check needs no model: the layer table alone gives the official 6,062,814 floats."""
    assert darknet_float_count(num_classes=80) == 6_062_814 == (24_251_276 - 20) // 4
    assert files["good"].stat().st_size == 20 + 4 * darknet_float_count(num_classes=2)


# (cfg, weights, error class, message) for each file a user can get wrong
BAD_MODEL_FILES = {
    "missing_weights": ("cfg", "nope.weights", "WeightsError", r"Darknet weights file not found: .*nope\.weights"),
    "missing_cfg": ("nope.cfg", "good", "WeightsError", r"Darknet cfg file not found: .*nope\.cfg"),
    "truncated": ("cfg", "truncated", "WeightsError", r"truncated Darknet weights: two\.cfg at 2 classes needs 5,882,634 float32 .* holds 5,882,534 "),
    "other_class_count": ("cfg", "three_classes", "WeightsError", r"wrong size .* at 2 classes .*; that size fits 3 classes; is it"),
    "ragged": ("cfg", "ragged", "WeightsError", r"wrong size .* \(5,882,634 float32\); is it"),
    "header": ("cfg", "bad_header", "WeightsError", r"not a Darknet weights file: header version 7\.99\.3"),
    "keras_h5": ("cfg", "hdf5", "WeightsError", r"not a Darknet weights file: it is HDF5"),
    "not_yolov4_tiny": ("not_tiny_cfg", "good", "WeightsError", r"layers: must join maps of one size, but got -1,8 .*layer 34 \[route\]"),
    "weights_without_cfg": (None, "good", "SpaceError", r"model\.cfg: is required with model\.weights"),
}


def _overrides(files, cfg_name, weights_name, tmp_path) -> list[str]:
    def path(name):
        return str(files[name]) if name in files else str(tmp_path / name)

    sets = ["--set", f"model.weights={path(weights_name)}", "--set", f"storage.cache_dir={tmp_path / 'cache'}"]
    return sets + (["--set", f"model.cfg={path(cfg_name)}"] if cfg_name else [])


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FILES))
def test_bad_model_file_is_one_line_before_anything_runs(case, files, tmp_path, capsys):
    cfg_name, weights_name, error, message = BAD_MODEL_FILES[case]
    run_dir = tmp_path / "run"
    code = main(["run", str(SMOKE), "--run-dir", str(run_dir), *_overrides(files, cfg_name, weights_name, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    line, = err.splitlines()
    assert line.startswith(f"{error}: "), line
    assert re.search(message, line), line
    # checked before the data was generated or the run directory made
    assert not run_dir.exists() and not (tmp_path / "cache").exists()


def test_validate_checks_the_model_files(files, tmp_path, capsys):
    code = main(["validate", str(SMOKE), *_overrides(files, "cfg", "truncated", tmp_path)])
    assert code == 2 and capsys.readouterr().err.startswith("WeightsError: truncated Darknet weights")


def test_cfg_classes_must_agree_with_the_data(files, tmp_path):
    """The cfg has 2 classes, the generated data 3: a DataError naming both, and nothing imported."""
    space = load_space(SMOKE, (f"model.weights={files['good']}", f"model.cfg={files['cfg']}",
                               f"storage.cache_dir={tmp_path / 'cache'}"))  # fmt: skip
    assert check_model_files(space) == 2
    with pytest.raises(DataError, match=r"the cfg has classes=2 but the data .* has 3 names; they must agree"):
        load_data(space)


def test_cfg_without_weights_is_checked_and_trains_at_the_datas_class_count(files):
    # (a cfg alone is the network a base model is trained as: its classes follow the data)
    assert check_model_files(load_space(SMOKE, (f"model.cfg={files['cfg']}",))) is None
    with pytest.raises(WeightsError, match=r"layers: must join maps of one size, but got -1,8"):
        check_model_files(load_space(SMOKE, (f"model.cfg={files['not_tiny_cfg']}",)))
    assert check_model_files(load_space(SMOKE)) is None


# ---- the official weights on coco128 (real files) ----


def _coco_space(tmp_path, *extra: str):
    return load_space(COCO_SPACE, (
        f"model.weights={REAL / 'darknet' / 'yolov4-tiny.weights'}", f"model.cfg={REAL / 'darknet' / 'yolov4-tiny.cfg'}",
        f"data.path={REAL / 'coco128' / 'data.yaml'}", f"storage.cache_dir={tmp_path / 'cache'}", *extra,
    ))  # fmt: skip


@pytest.mark.slow
@pytest.mark.real
@needs_real
def test_coco_space_validates_with_the_real_files(tmp_path, capsys):
    space = _coco_space(tmp_path)
    assert check_model_files(space) == 80
    dataset = load_data(space)  # also checks: calibration_size <= 128 train images, 80 cfg classes == 80 names
    assert (dataset.num_classes, len(dataset.train.examples), len(dataset.val.examples)) == (80, 128, 128)
    real_files = [f"model.weights={space.model.weights}", f"model.cfg={space.model.cfg}", f"data.path={space.data.path}"]
    assert main(["validate", str(COCO_SPACE), *(a for kv in real_files for a in ("--set", kv))]) == 0
    with pytest.raises(WeightsError, match="weights file not found"):
        check_model_files(replace(space, model=replace(space.model, weights=str(tmp_path / "x.weights"))))


@pytest.mark.slow
@pytest.mark.real
@needs_real
def test_official_weights_on_coco128_float32_tflite_equals_keras(tmp_path):
    """The imported base model's Keras mAP and its float32 TFLite mAP on 12 val images agree and are plausible."""
    from search.objectives.accuracy import measure_accuracy
    from search.models.yolov4_tiny.builder import build_yolov4_tiny
    from search.quantize import convert
    from search.tflite_model import TFLiteDetector

    space = _coco_space(tmp_path, "data.val_limit=12", "base_training.resolution=320")
    dataset = load_data(space)
    base = base_model(space, dataset, progress=False)
    assert base.source.startswith("darknet:") and not base.cached and base.resolution == 320
    again = base_model(space, dataset, progress=False)
    assert again.cached and again.key == base.key and again.map50 == base.map50

    from search.models import get_family

    model = build_yolov4_tiny(num_classes=80, resolution=320)
    model.load_weights(base.weights)
    detector = TFLiteDetector(convert(model, mode="float32").content)
    m = space.measure
    tflite = measure_accuracy(detector, dataset.val, heads=get_family(space.model.name).heads(80), resolution=320,
                              preprocessing="stretch", score_threshold=m.score_threshold,
                              iou_threshold=m.iou_threshold, max_detections=m.max_detections)
    print(f"12 coco128 val images at 320: keras {base.map50:.4f}/{base.map:.4f}, tflite {tflite}")
    assert tflite["map50"] == pytest.approx(base.map50, abs=0.005)
    assert tflite["map"] == pytest.approx(base.map, abs=0.005)
    # COCO val2017 AP50 is 0.40 at 416; a dozen images differ, but a broken import scores ~0
    assert 0.25 < tflite["map50"] < 0.9
