"""The search-efficiency benchmark's machinery (benchmarks/search_efficiency.py), on a tiny synthetic
table: the grid is every point of the define-by-run space (as Optuna's brute force finds them), the
look-up returns what was recorded, and a search that sees every point scores exactly 1."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import optuna
import pytest

from search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks" / "search_efficiency.py")
bench = sys.modules.setdefault("search_efficiency", importlib.util.module_from_spec(SPEC))  # a script, not a package
SPEC.loader.exec_module(bench)

TINY = """
search:
  resolution: {choices: [64, 96]}
  pruning:
    schedule: {choices: [none, polynomial_decay]}
    target_sparsity: {choices: [0.3, 0.6]}
    structure: unstructured
  quantization: {choices: [float32, int8, int8_selective]}
  calibration_size: {choices: [4, 8]}
  float_layers: 1
objectives:
  - {name: map50, direction: maximize}
  - {name: size_bytes, direction: minimize}
  - {name: latency_ms, direction: minimize}
"""
# 2 resolutions x 3 pruning settings x (float32 + int8 x 2 + int8_selective x 2)
TINY_POINTS = 2 * 3 * 5
FAILED = {"resolution": 96, "pruning_schedule": "none", "quantization": "int8", "calibration_size": 4}


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(TINY)
    return load_space(path)


def _metrics(params: dict) -> dict:
    """Made-up but structured numbers: larger and denser is more accurate, slower and bigger."""
    sparsity = float(params.get("target_sparsity", 0.0))
    quantized = params["quantization"] != "float32"
    calibration = params.get("calibration_size", 0) / 1000
    return {"map50": 0.3 + params["resolution"] / 400 - sparsity / 5 - 0.02 * quantized + calibration,
            "map": 0.1, "size_bytes": 24e6 / (4 if quantized else 1),
            "latency_ms": params["resolution"] ** 2 / 5000 * (0.5 if quantized else 1.0) * (1 - sparsity / 4)}


@pytest.fixture
def table(space, tmp_path):
    rows = [{"trial_id": "baseline", "status": "baseline", "map50": 0.6, "map": 0.2, "size_bytes": 24e6,
             "latency_ms": 3.0}]
    for i, params in enumerate(bench.grid_points(space)):
        failed = {k: v for k, v in params.items() if k in FAILED} == FAILED and len(params) == len(FAILED)
        row = {"trial_id": f"grid-{i:03d}", "status": "failed" if failed else "completed",
               **{f"param.{k}": v for k, v in params.items()}}
        rows.append(row if failed else {**row, **_metrics(params)})
    path = tmp_path / "trials.csv"
    bench.write_rows(path, rows)
    return path


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # BruteForceSampler
def test_the_grid_is_every_point_optuna_can_propose(space):
    points = bench.grid_points(space)
    assert len(points) == TINY_POINTS == len({bench.point_key(p) for p in points})
    # Optuna's own exhaustive sampler over the same define-by-run space finds the same points.
    found = []

    def objective(trial):
        constants = space.suggest(trial)
        found.append(bench.point_key({**trial.params, **constants}))
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0))
    study.optimize(objective, n_trials=10 * TINY_POINTS)  # stops by itself once every point was seen
    assert sorted(found) == sorted(bench.point_key(p) for p in points)
    # Conditional parameters appear only where they act.
    assert all("calibration_size" not in p for p in points if p["quantization"] == "float32")
    assert all(p["float_layers"] == 1 for p in points if p["quantization"] == "int8_selective")
    unpruned = [p for p in points if p["pruning_schedule"] == "none"]
    assert unpruned and all("target_sparsity" not in p and "pruning_structure" not in p for p in unpruned)


def test_a_float_range_is_refused_in_a_grid(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(TINY.replace("{choices: [0.3, 0.6]}", "{low: 0.3, high: 0.6}"))
    with pytest.raises(ValueError, match=r"target_sparsity must be \{choices: \[...\]\}"):
        bench.grid_points(load_space(path))


def test_the_lookup_returns_the_recorded_values(space, table):
    grid = bench.load_grid(space, table)
    assert grid.baseline == (0.6, 24e6, 3.0)
    assert len(grid.values) == TINY_POINTS
    params = {"resolution": 64, "pruning_schedule": "polynomial_decay", "target_sparsity": 0.6,
              "pruning_structure": "unstructured", "quantization": "int8", "calibration_size": 8}
    expected = _metrics(params)
    assert grid.lookup(params) == pytest.approx((expected["map50"], expected["size_bytes"], expected["latency_ms"]))
    assert grid.lookup(FAILED) is None  # a point that failed when recorded
    with pytest.raises(KeyError, match="not in the recorded table"):
        grid.lookup({**params, "calibration_size": 32})


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_search_that_sees_every_point_scores_one(space, table):
    grid = bench.load_grid(space, table)
    brute = lambda budget: optuna.samplers.BruteForceSampler(seed=budget.seed)  # noqa: E731
    assert bench.replay(grid, space, brute, trials=TINY_POINTS, seed=0) == pytest.approx(1.0)
    # Fewer trials find less, never more; the same seed finds the same.
    random = bench.replay_samplers()["random"][1]
    few = [bench.replay(grid, space, random, trials=3, seed=s) for s in range(3)]
    assert all(0.0 <= r < 1.0 for r in few)
    assert few == [bench.replay(grid, space, random, trials=3, seed=s) for s in range(3)]


def test_every_replayed_sampler_runs_and_the_goal_line_reads_the_medians(space, table):
    grid = bench.load_grid(space, table)
    samplers = {k: v for k, v in bench.replay_samplers().items() if v[1] is not None}
    results = bench.replay_all(grid, space, samplers, seeds=range(2), fractions=(0.25, 0.5), echo=lambda line: None)
    assert set(results) >= {"default", "tpe", "nsga2", "random"}
    assert all(list(by) == bench.budgets(TINY_POINTS, (0.25, 0.5)) == [7, 15] for by in results.values())
    met, line = bench.goal_line({"default": {7: [0.96, 0.97, 0.5]}, "random": {7: [0.9, 0.8, 0.99]}}, size=TINY_POINTS)
    assert met and line.startswith("goal MET") and "0.960" in line
    met, line = bench.goal_line({"default": {7: [0.9]}, "random": {7: [0.95]}}, size=TINY_POINTS)
    assert not met and "best median 0.900 at 7 trials" in line
    assert statistics.median(results["default"][15]) <= 1.0 + 1e-9


@pytest.mark.skipif(not bench.TABLE.exists(), reason="benchmarks/grid/trials.csv not recorded yet")
def test_the_recorded_table_holds_every_point_of_the_grid_space():
    space = load_space(bench.SPACE)
    grid = bench.load_grid(space)
    assert len(grid.values) == len(bench.grid_points(space))
    assert sum(v is not None for v in grid.values.values()) > len(grid.values) // 2
    assert grid.front_hypervolume > 0
