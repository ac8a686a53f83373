"""The Pareto front against Optuna's own ``best_trials``, and the export rules."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from search.pareto import pareto_front, pick_export

DIRECTIONS = ["maximize", "minimize", "minimize"]


def optuna_front(values, directions) -> set[int]:
    study = optuna.create_study(directions=directions)
    for row in values:
        trial = study.ask()
        study.tell(trial, list(row))
    return {t.number for t in study.best_trials}


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_optuna_best_trials(seed):
    rng = np.random.default_rng(seed)
    # Rounded, so that ties and duplicates (the hard cases) happen.
    values = np.column_stack([rng.integers(0, 10, 40) / 10, rng.integers(1, 8, 40) * 1e6, rng.integers(5, 15, 40)])
    assert set(pareto_front(values, DIRECTIONS)) == optuna_front(values.tolist(), DIRECTIONS)


def test_front_of_hand_made_points():
    values = [[0.5, 10, 5], [0.6, 10, 5], [0.4, 5, 5], [0.4, 6, 5], [0.6, 10, 5]]
    # 0 is dominated by 1; 3 by 2; 1 and 4 are equal and both kept.
    assert pareto_front(values, DIRECTIONS) == [1, 2, 4]
    assert pareto_front([], DIRECTIONS) == []


def test_export_rules():
    names = ["map50", "size_bytes", "latency_ms"]
    values = [[0.9, 100, 50], [0.8, 20, 10], [0.3, 10, 5], [0.2, 200, 90]]
    sizes = [v[1] for v in values]
    latencies = [v[2] for v in values]
    assert pick_export(values, names, DIRECTIONS, rule="max_accuracy", accuracy="map50") == 0
    assert pick_export(values, names, DIRECTIONS, rule="knee", accuracy="map50") == 1
    assert pick_export(values, names, DIRECTIONS, rule="within_limits", accuracy="map50", max_size_bytes=15,
                       size_bytes=sizes, latency_ms=latencies) == 2
    assert pick_export(values, names, DIRECTIONS, rule="within_limits", accuracy="map50", max_latency_ms=1,
                       size_bytes=sizes, latency_ms=latencies) is None
    with pytest.raises(ValueError, match="rule must be one of"):
        pick_export(values, names, DIRECTIONS, rule="best", accuracy="map50")
