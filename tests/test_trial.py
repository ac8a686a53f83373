"""One trial end to end, at a tiny resolution, for every quantization mode, and with pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.quantize import QUANT_MODES, strategies
from search.stages.convert import calibration_images, calibration_indices
from search.trial import TrialContext, TrialParams, TrialResult, run_trial
from tests.helpers import smoke_trial_context

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> TrialContext:
    return smoke_trial_context(tmp_path_factory.mktemp("trial"))


def _run(params: TrialParams, context: TrialContext, tmp_path: Path, name: str) -> TrialResult:
    out = tmp_path / name
    out.mkdir()
    return run_trial(params, context, out_dir=out)


def _check_tflite_runs(path: str, resolution: int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert tuple(detail["shape"]) == (1, resolution, resolution, 3)
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    interpreter.invoke()
    grids = sorted(interpreter.get_tensor(o["index"]).shape[1] for o in interpreter.get_output_details())
    assert grids == [resolution // 32, resolution // 16]


# The int8 recipes are one strategy run with its row's settings, each converted and audited in
# tests/quantize/test_recipes.py: the fast tier runs a trial of the recipe that combines them all
# (heads kept with int8 kernels, percentile ranges, bias correction), the slow tier every other one.
FAST_RECIPE = "int8_dynamic_heads_percentile_bias_corrected"


def _trial_modes() -> list:
    return [pytest.param(mode, marks=pytest.mark.slow)
            if row.strategy is strategies.recipe and mode != FAST_RECIPE else mode
            for mode, row in QUANT_MODES.items()]


@pytest.mark.parametrize("mode", _trial_modes())
def test_one_trial_per_quantization_mode(context, mode, tmp_path):
    calibrates = QUANT_MODES[mode].needs_calibration
    params = TrialParams(resolution=64, pruning_schedule="none", quantization=mode, calibration_size=4 if calibrates else None)
    result = _run(params, context, tmp_path, f"mode-{mode}")
    metrics = result.metrics
    assert 0.0 <= metrics["map50"] <= 1.0 and 0.0 <= metrics["map"] <= metrics["map50"] + 1e-9
    assert metrics["size_bytes"] == result.model_file.stat().st_size
    assert 0 < metrics["size_gzip_bytes"] < metrics["size_bytes"]
    assert 0 < metrics["latency_ms"] <= metrics["latency_p90_ms"]
    assert result.audit.startswith("pass"), result.audit
    # The steps, then one timing per measurement: those the smoke objectives need (map50, size,
    # latency) and the counts every trial records (macs, params).
    steps = {"build", "fine_tune", "convert", "accuracy", "size", "latency"} | ({"qat"} if QUANT_MODES[mode].needs_qat else set())
    assert set(result.seconds) == steps | {"macs", "params"}
    assert all(result.seconds[step] > 0 for step in steps)
    assert metrics["params"] > 0 and metrics["macs"] > 0
    _check_tflite_runs(str(result.model_file), 64)


def test_pruned_trial_reaches_its_sparsity_and_gzips_smaller(context, tmp_path):
    # 64 px as the mode tests above: the dense fine-tune is their cached one
    dense = _run(TrialParams(resolution=64, pruning_schedule="none", quantization="float32"), context, tmp_path, "dense")
    pruned = _run(
        TrialParams(resolution=64, pruning_schedule="polynomial_decay", target_sparsity=0.6, pruning_structure="unstructured",
                    quantization="float32"),
        context, tmp_path, "pruned",
    )
    assert dense.sparsity < 0.01
    assert abs(pruned.sparsity - 0.6) < 0.02
    # Unstructured zeros shrink a float32 file only in TFLite's sparse encoding (search.pruning.sparse_encoding,
    # on by default), which the record names; either way they compress.
    assert pruned.metrics["size_bytes"] < 0.8 * dense.metrics["size_bytes"]
    assert "kept sparse encoding" in pruned.audit and "kept" not in dense.audit
    assert pruned.metrics["size_gzip_bytes"] < 0.7 * dense.metrics["size_gzip_bytes"]


def test_calibration_images_are_exact_seeded_and_from_train(context):
    from search.data.preprocess import split_arrays

    picked = calibration_indices(20, size=8, seed=3)
    assert len(set(picked)) == 8 and list(picked) == sorted(picked) and picked.max() < 20
    np.testing.assert_array_equal(picked, calibration_indices(20, size=8, seed=3))
    assert not np.array_equal(picked, calibration_indices(20, size=8, seed=4))
    with pytest.raises(ValueError, match="calibration_size must be <= 20"):
        calibration_indices(20, size=21, seed=0)

    # Only the picked images are decoded, and they are exactly those of the whole preprocessed split.
    train = context.dataset.train
    images = calibration_images(train, size=8, seed=3, resolution=64, preprocessing="stretch")
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.float32 and 0.0 <= images.min() <= images.max() <= 1.0
    whole = split_arrays(train, resolution=64, mode="stretch").images
    np.testing.assert_array_equal(images, whole[calibration_indices(len(train), size=8, seed=3)].astype(np.float32) / 255.0)


def test_the_export_reports_per_layer_error_for_int8_only(context, tmp_path):
    import csv
    import json

    from search.export import export_trial

    def exported(params: TrialParams, name: str) -> Path:
        result = _run(params, context, tmp_path, f"trial-{name}")
        record = result.record(f"export-{name}", model_path=str(result.model_file))
        (tmp_path / name).mkdir()
        return export_trial(record, context, tmp_path / name, base={}, echo=lambda line: None)

    int8 = exported(TrialParams(resolution=64, pruning_schedule="none", quantization="int8", calibration_size=4), "int8")
    with (int8 / "quant_errors.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 20 and rows[0]["rank"] == "1"
    assert float(rows[0]["rmse_over_scale"]) >= float(rows[-1]["rmse_over_scale"])  # worst first
    assert json.loads((int8 / "model.json").read_text())["quantization_error_report"] == "quant_errors.csv"

    float16 = exported(TrialParams(resolution=64, pruning_schedule="none", quantization="float16"), "float16")
    assert not (float16 / "quant_errors.csv").exists()
    assert json.loads((float16 / "model.json").read_text())["quantization_error_report"].startswith("none: mode float16")
    assert not list(tmp_path.glob("*/.export.*"))  # no half-written export left behind
