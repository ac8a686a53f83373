"""The Pareto front against Optuna's own ``best_trials``, and the export rules."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from search.pareto import EXPORT_RULES, compute_front, pareto_front
from search.record import BASELINE, COMPLETED, FAILED, TrialRecord
from search.space import ExportSpec, ObjectiveSpec

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
NAMES = [o.name for o in OBJECTIVES]


def _records(values, feasible=None) -> list[TrialRecord]:
    return [TrialRecord(f"t{i}", COMPLETED, metrics=dict(zip(NAMES, row)),
                        feasible=None if feasible is None else feasible[i]) for i, row in enumerate(values)]


def _front(values, rule: str, *, baseline=None, feasible=None, **export):
    spec = ExportSpec(rule=rule, accuracy="map50", **export)
    base = TrialRecord("baseline", BASELINE, metrics=dict(zip(NAMES, baseline))) if baseline else None
    return compute_front(_records(values, feasible), objectives=OBJECTIVES, export=spec, baseline=base,
                         prefer=("latency_ms", "size_bytes"))


def test_export_rules():
    values = [[0.9, 100, 50], [0.8, 20, 10], [0.3, 10, 5], [0.2, 200, 90]]
    assert _front(values, "max_accuracy").exported == 0
    assert _front(values, "knee").exported == 1
    assert _front(values, "within_limits", max_size_bytes=15).exported == 2
    assert _front(values, "within_limits", max_latency_ms=1).exported is None
    assert set(EXPORT_RULES) == {"accuracy_budget", "knee", "max_accuracy", "within_limits"}
    assert all(rule.description and callable(rule.pick) for rule in EXPORT_RULES.values())


# The front of the default `make run` that exported a model nobody ships (issue 11): the old knee
# scaled each objective to 0..1 over the front, so 0.04 MB of size counted as much as 0.53 mAP.
SHIPPED_BADLY = [[0.268, 5_940_000, 0.6],   # 3f667edc: 96 px, dynamic range
                 [0.802, 5_980_000, 1.9]]   # bf6a16af: 192 px, qat_int8
BASELINE_160 = [0.684, 23_500_000, 10.6]   # float32 at the base resolution


@pytest.mark.parametrize("rule", sorted(set(EXPORT_RULES) - {"within_limits"}))
def test_no_shipped_rule_exports_the_model_that_lost_two_thirds_of_its_accuracy(rule):
    front = _front(SHIPPED_BADLY, rule, baseline=BASELINE_160)
    assert front.exported == 1, front.note
    # ... unless the user's own limits force it.
    assert _front(SHIPPED_BADLY, "within_limits", max_latency_ms=1.0).exported == 0


def test_accuracy_budget_takes_the_fastest_within_the_budget_else_the_most_accurate():
    values = [[0.700, 6e6, 4.0], [0.690, 6e6, 2.0], [0.676, 6e6, 1.0], [0.690, 3e6, 2.0]]
    front = _front(values, "accuracy_budget", baseline=[0.695, 24e6, 10.0])  # within 1 point: 0.685 and up
    assert front.exported == 3 and "within 1 points" in front.note  # 1 and 3 tie on latency: size decides
    tight = _front(values, "accuracy_budget", baseline=[0.800, 24e6, 10.0])
    assert tight.exported == 0 and "no front trial is within" in tight.note
    prefer_size = _front([[0.69, 3e6, 4.0], [0.69, 6e6, 1.0]], "accuracy_budget", baseline=[0.69, 24e6, 10.0])
    assert prefer_size.exported == 1
    assert compute_front(_records([[0.69, 3e6, 4.0], [0.69, 6e6, 1.0]]), objectives=OBJECTIVES,
                         export=ExportSpec(accuracy="map50"), baseline=TrialRecord("baseline", BASELINE,
                         metrics=dict(zip(NAMES, [0.69, 24e6, 10.0]))), prefer=("size_bytes", "latency_ms")).exported == 0


def test_the_knee_weighs_ratios_not_ranges():
    # 1% of size must not outweigh a factor of three in latency.
    assert _front([[0.7, 5.94e6, 3.0], [0.7, 6.0e6, 1.0]], "knee").exported == 1


def test_infeasible_trials_stay_off_the_front_and_out_of_the_export():
    values = [[0.9, 100, 50], [0.8, 20, 10], [0.3, 10, 5]]
    front = _front(values, "max_accuracy", feasible=[False, True, True])
    assert front.members == (1, 2) and front.exported == 1 and front.infeasible == [0]
    assert _front(values, "within_limits", feasible=[True, True, False], max_size_bytes=15).exported is None


def test_the_front_is_a_value_over_completed_records_only():
    records = [*_records([[0.9, 100, 50], [0.8, 20, 10]]), TrialRecord("lost", FAILED, "worker died")]
    front = compute_front(records, objectives=OBJECTIVES, export=ExportSpec(rule="max_accuracy", accuracy="map50"))
    assert [r.trial_id for r in front.completed] == ["t0", "t1"]
    assert [r.trial_id for r in front.records] == ["t0", "t1"] and front.exported_record.trial_id == "t0"
    assert compute_front([], objectives=OBJECTIVES, export=ExportSpec(accuracy="map50")).exported is None
