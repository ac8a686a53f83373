"""The Pareto front against Optuna's own ``best_trials``, and the export rules."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from search.pareto import EXPORT_RULES, compute_front, pareto_front
from search.record import COMPLETED, FAILED, TrialRecord
from search.space import ObjectiveSpec

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


OBJECTIVES = [ObjectiveSpec("map50", "maximize"), ObjectiveSpec("size_bytes", "minimize"), ObjectiveSpec("latency_ms", "minimize")]


def _records(values) -> list[TrialRecord]:
    names = [o.name for o in OBJECTIVES]
    return [TrialRecord(f"t{i}", COMPLETED, metrics=dict(zip(names, row))) for i, row in enumerate(values)]


def _pick(values, rule: str, **limits):
    front = compute_front(_records(values), objectives=OBJECTIVES, rule=rule, accuracy="map50", limits=limits)
    return front.exported


def test_export_rules():
    values = [[0.9, 100, 50], [0.8, 20, 10], [0.3, 10, 5], [0.2, 200, 90]]
    assert _pick(values, "max_accuracy") == 0
    assert _pick(values, "knee") == 1
    assert _pick(values, "within_limits", size_bytes=15) == 2
    assert _pick(values, "within_limits", latency_ms=1) is None
    assert set(EXPORT_RULES) == {"knee", "max_accuracy", "within_limits"}
    assert all(rule.description and callable(rule.pick) for rule in EXPORT_RULES.values())


def test_the_front_is_a_value_over_completed_records_only():
    records = [*_records([[0.9, 100, 50], [0.8, 20, 10]]), TrialRecord("lost", FAILED, "worker died")]
    front = compute_front(records, objectives=OBJECTIVES, rule="max_accuracy", accuracy="map50", limits={})
    assert [r.trial_id for r in front.completed] == ["t0", "t1"]
    assert [r.trial_id for r in front.records] == ["t0", "t1"] and front.exported_record.trial_id == "t0"
    assert compute_front([], objectives=OBJECTIVES, rule="knee", accuracy="map50", limits={}).exported is None
