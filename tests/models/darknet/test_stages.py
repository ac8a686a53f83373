"""Every stage for every cfg: one tiny trial per cfg (prune, fine-tune, convert, audit, measure), and
its export, whose Darknet cfg + weights OpenCV reads back to the same heads as the trial's network."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from search.inputs import load_data
from search.models import family_of
from search.space import load_space
from search.trial import TrialContext, TrialParams, run_trial
from tests.models.darknet.common import ALL_OPTIONS_CFG, family_cfg, family_params

ROOT = Path(__file__).resolve().parents[3]
RESOLUTION = 64


def _context(tmp: Path, cfg: Path) -> TrialContext:
    space = load_space(ROOT / "spaces" / "smoke.yaml", (f"storage.cache_dir={tmp / 'cache'}", "fine_tune.steps=10",
                                                        f"model.cfg={cfg}"))
    dataset = load_data(space)  # checks the cfg first
    weights = tmp / "base.h5"  # untrained: the pipeline, not the accuracy, is under test
    family_of(space.model).build(num_classes=dataset.num_classes, resolution=RESOLUTION).save_weights(str(weights))
    return TrialContext(space=space, dataset=dataset, base_weights=str(weights), stages_dir=str(tmp / "stages"))


def _grids(path: Path) -> list[int]:
    from search.tflite_model import load_interpreter

    interpreter = load_interpreter(path)
    return sorted(int(o["shape"][1]) for o in interpreter.get_output_details())


def _opencv_matches_the_stage(export: Path, context: TrialContext) -> None:
    """The exported cfg + weights, read by OpenCV, compute the heads our Keras reading of them computes."""
    family = family_of(context.space.model)
    model, _ = family.load_pretrained(export / "model.cfg", export / "model.weights", resolution=RESOLUTION)
    image = np.random.default_rng(0).random((1, RESOLUTION, RESOLUTION, 3), np.float32)
    net = cv2.dnn.readNetFromDarknet(str(export / "model.cfg"), str(export / "model.weights"))
    names = net.getLayerNames()
    net.setInput(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    theirs = net.forward([names[i - 1] for i, name in enumerate(names) if name.startswith("permute_")])
    for ours, reference in zip(model(image, training=False), theirs):
        np.testing.assert_allclose(ours.numpy(), reference.transpose(0, 2, 3, 1), rtol=0, atol=1e-3)


def _trial_and_export(context: TrialContext, tmp: Path, params: TrialParams) -> None:
    from search.export import export_trial

    out = tmp / "trial"
    out.mkdir()
    result = run_trial(params, context, out_dir=out)
    heads = family_of(context.space.model).heads(context.dataset.num_classes)
    assert result.audit.startswith("pass"), result.audit
    assert 0.0 <= result.metrics["map50"] <= 1.0 and result.metrics["size_bytes"] == result.model_file.stat().st_size
    assert _grids(result.model_file) == sorted(RESOLUTION // s for s in heads.strides)
    if params.pruning_schedule != "none":
        assert abs(result.sparsity - 0.5) < 0.03, result.sparsity
    (tmp / "run").mkdir()
    record = result.record("t", model_path=str(result.model_file))
    export = export_trial(record, context, tmp / "run", base={}, echo=lambda line: None)
    card = json.loads((export / "model.json").read_text())
    assert card["outputs"]["strides"] == list(heads.strides) and card["model"].startswith("Darknet ")
    if params.quantization == "qat_int8":
        assert card["darknet"].startswith("none: mode qat_int8") and not (export / "model.cfg").exists()
        return
    assert card["darknet"].startswith("model.cfg + model.weights")
    assert (export / "quant_errors.csv").exists() == (params.quantization == "int8")
    _opencv_matches_the_stage(export, context)


INT8_PRUNED = TrialParams(resolution=RESOLUTION, pruning_schedule="polynomial_decay", target_sparsity=0.5,
                          pruning_structure="unstructured", quantization="int8", calibration_size=4)


def test_a_generated_cfg_runs_every_stage(tmp_path):
    cfg = tmp_path / "all-options.cfg"
    cfg.write_text(ALL_OPTIONS_CFG)
    _trial_and_export(_context(tmp_path, cfg), tmp_path, INT8_PRUNED)


# qat_int8 is slow: a second fine-tune, of the stock network (~60 s here); int8 keeps filter
# pruning's trial in make test-fast.
@pytest.mark.parametrize("mode", ["int8", pytest.param("qat_int8", marks=pytest.mark.slow)])
def test_filter_pruning_runs_every_stage(mode, tmp_path):
    # the thinner network through the cache, conversion, audit, measurement and export (cfg + weights);
    # QAT takes the stock cfg: it has never supported the generated cfg's first-half channel split
    from search.models.yolov4_tiny.darknet import yolov4_tiny_cfg_text

    cfg = tmp_path / "net.cfg"
    cfg.write_text(ALL_OPTIONS_CFG if mode == "int8" else yolov4_tiny_cfg_text(num_classes=2))
    params = TrialParams(resolution=RESOLUTION, pruning_schedule="polynomial_decay", target_sparsity=0.5,
                         pruning_structure="filters", quantization=mode, calibration_size=4 if mode == "int8" else None)
    _trial_and_export(_context(tmp_path, cfg), tmp_path, params)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("name", family_params())
def test_every_family_cfg_runs_every_stage(name, tmp_path):
    _trial_and_export(_context(tmp_path, family_cfg(name)), tmp_path, INT8_PRUNED)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("name", family_params("yolov4-tiny-3l", "yolov7-tiny"))
def test_qat_of_2_4_pruned_three_head_cfgs(name, tmp_path):
    params = TrialParams(resolution=RESOLUTION, pruning_schedule="polynomial_decay", pruning_structure="2:4",
                         quantization="qat_int8")
    _trial_and_export(_context(tmp_path, family_cfg(name)), tmp_path, params)
