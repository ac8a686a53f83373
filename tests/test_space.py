"""The space file: parsed once, every bad input one clear line; the define-by-run space."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml

from search.data.formats import DATA_FORMATS
from search.data.preprocess import PREPROCESSING, preprocessing_mode
from search.errors import SpaceError
from search.models import FAMILIES, get_family
from search.pareto import EXPORT_RULES
from search.pruning import SCHEDULES, STRUCTURES, PruningSpec
from search.quantize import QUANT_MODES, get_mode
from search.samplers import SAMPLERS
from search.space import load_space
from search.spec import choose

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))


def write_space(tmp_path: Path, edit) -> Path:
    """The smoke space with ``edit(raw)`` applied, written to tmp_path/space.yaml."""
    raw = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    edit(raw)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(SpaceError) as caught:
        load_space(path, tuple(overrides))
    message = str(caught.value)
    assert "\n" not in message, "an error is one line"
    return message


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_are_valid(path):
    space = load_space(path)
    assert space.objectives and space.search.quantization.values
    assert len(space.sha256) == 64


def test_bad_key_message_is_pinned(tmp_path):
    path = write_space(tmp_path, lambda raw: raw["budget"].update(trails=4))
    assert error_of(path) == (
        f"{path}: budget.trails: is not a known key; allowed: cpus_per_trial, max_concurrent, max_retries, "
        "sampler, seed, time_budget_s, trials; did you mean 'trials'?"
    )


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r["search"].update(resolution={"choices": [64, 100]}), "search.resolution: must be multiples of 32 from 32 to 1024, but got 100"),
        (lambda r: r["search"].update(quantization={"choices": ["int9"]}), "search.quantization: must be one of the names below, but got 'int9'; allowed: float32, "),
        (lambda r: r["search"].update(quantization="float61"), "did you mean 'float16'?"),
        (lambda r: r["search"]["pruning"].update(target_sparsity={"low": 0.7, "high": 0.3}), "search.pruning.target_sparsity: must have low < high (a non-empty range), but got low=0.7, high=0.3"),
        (lambda r: r["search"]["pruning"].update(target_sparsity=1.5), "must be fractions with 0 < sparsity < 1, but got 1.5"),
        (lambda r: r["budget"].update(trials="many"), "budget.trials: must be an integer >= 1, but got 'many'"),
        (lambda r: r["budget"].update(trials=0), "budget.trials: must be an integer >= 1, but got 0"),
        (lambda r: r["budget"].update(sampler="cmaes"), "budget.sampler: must be one of the names below, but got 'cmaes'; allowed: tpe, nsga2, random"),
        (lambda r: r.update(objectives=[{"name": "size_bytes", "direction": "minimize"}]), "objectives: must include an accuracy objective"),
        (lambda r: r.update(objectives=[{"name": "map50", "direction": "minimize"}]), "objectives[0].direction: map50 can only be maximized, but got 'minimize'"),
        (lambda r: r.update(objectives=[{"name": "mAP", "direction": "maximize"}]), "objectives[0].name: must be one of the names below, but got 'mAP'"),
        (lambda r: r["data"].update(format="yolo"), "data.path: is required for format 'yolo'"),
        (lambda r: r["base_training"].update(resolution=100), "base_training.resolution: must be a multiple of 32, but got 100"),
        (lambda r: r["fine_tune"].update(distill_weight=-0.5), "fine_tune.distill_weight: must be a number >= 0.0 and <= 100.0, but got -0.5"),
        (lambda r: r["fine_tune"].update(distill_weight="on"), "fine_tune.distill_weight: must be a number >= 0.0 and <= 100.0, but got 'on'"),
        (lambda r: r["base_training"].update(distill_weight=1.0), "base_training.distill_weight: is not a known key"),
        (lambda r: r.update(search=None), "search: is required but missing"),
        (lambda r: r["budget"].update(trials=None), "budget: must set trials, time_budget_s or both"),
        (lambda r: r.setdefault("storage", {}).update(path="ftp://host/search"), "storage.path: must be a folder every node mounts at the same path, or an object store URI (s3://, gs://, gcs://, hdfs://, viewfs://), but got 'ftp://host/search'"),
        (lambda r: r.setdefault("storage", {}).update(path="s3://"), "storage.path: must name a bucket (e.g. s3://my-bucket/search), but got 's3://'"),
        (lambda r: r["measure"].update(latency_min_seconds=20), "measure.latency_min_seconds: must be <= latency_max_seconds (2), but got 20"),
        (lambda r: r["search"]["pruning"].update(sparse_encoding="yes"), "search.pruning.sparse_encoding: must be true or false, but got 'yes'"),
    ],
)
def test_bad_values_name_file_key_allowed_and_given(tmp_path, edit, expected):
    path = write_space(tmp_path, edit)
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("search:\n  resolution: [64, 96\nbudget: {trials: 2}\n")
    assert error_of(path).startswith(f"{path}: malformed YAML at line ")


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such space file"


def test_sparse_encoding_is_on_unless_the_space_turns_it_off():
    path = ROOT / "spaces" / "smoke.yaml"
    assert load_space(path).search.sparse_encoding is True
    assert load_space(path, ("search.pruning.sparse_encoding=false",)).search.sparse_encoding is False


def test_overrides_apply_and_are_validated(tmp_path):
    path = ROOT / "spaces" / "smoke.yaml"
    space = load_space(path, ("budget.trials=7", "data.val_limit=5"))
    assert space.budget.trials == 7 and space.data.val_limit == 5
    assert "budget.trials: must be an integer >= 1, but got -1" in error_of(path, ["budget.trials=-1"])


def _ask(space, seed: int) -> dict:
    study = optuna.create_study(directions=[o.direction for o in space.objectives], sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    constants = space.suggest(trial)
    return {**trial.params, **constants}


def test_define_by_run_asks_conditional_parameters_only_when_they_act():
    space = load_space(ROOT / "spaces" / "yolov4_tiny.yaml")
    seen_modes, seen_schedules, seen_structures = set(), set(), set()
    for seed in range(60):
        params = _ask(space, seed)
        seen_modes.add(params["quantization"])
        seen_schedules.add(params["pruning_schedule"])
        seen_structures.add(params.get("pruning_structure"))
        assert params["resolution"] % 32 == 0
        calibrates = QUANT_MODES[params["quantization"]].needs_calibration
        assert ("calibration_size" in params) == calibrates, params
        prunes = params["pruning_schedule"] != "none"
        assert ("pruning_structure" in params) == prunes, params
        assert ("target_sparsity" in params) == (prunes and params["pruning_structure"] != "2:4"), params
        if prunes:
            assert 0.3 <= params["target_sparsity"] <= 0.8
    assert QUANT_MODES["int8"].needs_calibration and not QUANT_MODES["float32"].needs_calibration
    assert seen_modes == set(space.search.quantization.values)
    assert seen_schedules == {"none", "polynomial_decay"}
    assert seen_structures == {None, "unstructured", "filters"}  # the default space offers filter pruning


def test_fixed_dimension_is_a_constant_not_a_parameter():
    space = load_space(ROOT / "spaces" / "yolov4_tiny.yaml", ("search.pruning.structure=unstructured",))
    for seed in range(20):
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
        trial = study.ask()
        constants = space.suggest(trial)
        if trial.params["pruning_schedule"] != "none":
            assert constants == {"pruning_structure": "unstructured"}
            assert "pruning_structure" not in trial.params
            return
    pytest.fail("no trial pruned in 20 draws")


def test_two_four_structure_never_asks_for_a_target_sparsity():
    space = load_space(ROOT / "spaces" / "smoke.yaml", ("search.pruning.structure={choices: [unstructured, '2:4']}",))
    structures = set()
    for seed in range(40):
        params = _ask(space, seed)
        if params["pruning_schedule"] != "none":
            structures.add(params["pruning_structure"])
            assert ("target_sparsity" in params) == (params["pruning_structure"] == "unstructured"), params
    assert structures == {"unstructured", "2:4"}


def test_relative_paths_become_absolute_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load_space(ROOT / "spaces" / "smoke.yaml", ("storage.cache_dir=c", "data.path=d/data.yaml", "model.weights=w.weights"))
    assert space.cache_dir == str(tmp_path / "c")
    assert space.data.path == str(tmp_path / "d" / "data.yaml")
    assert space.model.weights == str(tmp_path / "w.weights")


# --- One table per finite choice: an unknown name reads the same wherever it is met.

# (table, the key that names a row of it, a typo, the row the typo meant)
TABLES = {
    "quantization modes": (QUANT_MODES, "search.quantization", "int88", "int8"),
    "pruning schedules": (SCHEDULES, "search.pruning.schedule", "constnt", "constant"),
    "pruning structures": (STRUCTURES, "search.pruning.structure", "unstructred", "unstructured"),
    "samplers": (SAMPLERS, "budget.sampler", "tpee", "tpe"),
    "export rules": (EXPORT_RULES, "export.rule", "kne", "knee"),
    "data formats": (DATA_FORMATS, "data.format", "cocoo", "coco"),
    "preprocessing": (PREPROCESSING, "data.preprocessing", "letterbx", "letterbox"),
    "model families": (FAMILIES, "model.name", "yolov4tiny", "yolov4_tiny"),
}


def _unknown_line(table, typo: str, meant: str) -> str:
    return f"must be one of the names below, but got {typo!r}; allowed: {', '.join(table)}; did you mean {meant!r}?"


@pytest.mark.parametrize("table, key, typo, meant", TABLES.values(), ids=TABLES.keys())
def test_an_unknown_name_in_any_table_is_the_same_line(tmp_path, table, key, typo, meant):
    *sections, name = key.split(".")

    def edit(raw):
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = typo

    path = write_space(tmp_path, edit)
    assert error_of(path) == f"{path}: {key}: {_unknown_line(table, typo, meant)}"
    with pytest.raises(SpaceError) as caught:
        choose(table, typo, what=key)
    assert str(caught.value) == f"{key} {_unknown_line(table, typo, meant)}"


@pytest.mark.parametrize(
    "lookup, what, table, typo, meant",
    [
        (lambda name: PruningSpec(schedule=name, target_sparsity=0.5), "pruning schedule", SCHEDULES, "constnt", "constant"),
        (lambda name: PruningSpec(schedule="constant", target_sparsity=0.5, structure=name), "pruning structure", STRUCTURES, "2:5", "2:4"),
        (preprocessing_mode, "preprocessing", PREPROCESSING, "letterbx", "letterbox"),
        (get_mode, "quantization mode", QUANT_MODES, "int88", "int8"),
        (get_family, "model.name", FAMILIES, "yolov4tiny", "yolov4_tiny"),
    ],
    ids=["PruningSpec.schedule", "PruningSpec.structure", "preprocessing_mode", "get_mode", "get_family"],
)
def test_runtime_lookups_use_the_same_line(lookup, what, table, typo, meant):
    with pytest.raises(SpaceError) as caught:
        lookup(typo)
    assert str(caught.value) == f"{what} {_unknown_line(table, typo, meant)}"


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_is_seeded_by_the_budget(name):
    space = load_space(ROOT / "spaces" / "smoke.yaml", (f"budget.sampler={name}",))

    def proposals(seed: int) -> list[dict]:
        sampler = SAMPLERS[name].make(replace(space.budget, seed=seed))
        study = optuna.create_study(directions=[o.direction for o in space.objectives], sampler=sampler)
        asked = []
        for _ in range(4):
            trial = study.ask()
            space.suggest(trial)
            asked.append(trial.params)
            study.tell(trial, [0.5] * len(space.objectives))
        return asked

    assert proposals(0) == proposals(0)
    assert proposals(0) != proposals(1)


def test_suggest_reads_the_mode_rows():
    # Every mode that calibrates asks for calibration_size, every selective one for float_layers.
    modes = ", ".join(QUANT_MODES)
    space = load_space(ROOT / "spaces" / "smoke.yaml", (f"search.quantization={{choices: [{modes}]}}",))
    seen = set()
    for seed in range(80):
        params = _ask(space, seed)
        mode = QUANT_MODES[params["quantization"]]
        seen.add(params["quantization"])
        assert ("calibration_size" in params) == mode.needs_calibration, params
        assert ("float_layers" in params) == mode.selective, params
    assert seen == set(QUANT_MODES)
