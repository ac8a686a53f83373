"""The hypervolume of a front against the baseline's reference point, checked against Optuna's own."""

from __future__ import annotations

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from search.hypervolume import REFERENCE_RATIO, history, hypervolume, reference_point, relative_losses
from search.record import COMPLETED, FAILED, TrialRecord

DIRECTIONS = ["maximize", "minimize", "minimize"]
NAMES = ["map50", "size_bytes", "latency_ms"]
BASELINE = [0.6, 24e6, 12.0]


def test_the_baseline_alone_scores_one_and_a_quarter_the_size_and_latency_scores_more():
    assert hypervolume(np.array([BASELINE]), DIRECTIONS, BASELINE) == pytest.approx(1.0)
    quarter = hypervolume(np.array([[0.6, 6e6, 3.0]]), DIRECTIONS, BASELINE)
    assert quarter == pytest.approx(1.0 * (REFERENCE_RATIO - 0.25) ** 2)


def test_hypervolume_equals_optunas_on_the_relative_losses():
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(0.1, 0.7, 30), rng.uniform(3e6, 40e6, 30), rng.uniform(1, 30, 30)])
    losses = relative_losses(points, DIRECTIONS, BASELINE)
    inside = losses[np.all(losses < reference_point(DIRECTIONS), axis=1)]
    assert 0 < len(inside) < len(points)  # some trials lie outside the reference box and add nothing
    expected = compute_hypervolume(inside, reference_point(DIRECTIONS))
    assert hypervolume(points, DIRECTIONS, BASELINE) == pytest.approx(expected)
    # Dominated points add nothing.
    assert hypervolume(np.vstack([points, points * [0.5, 2, 2]]), DIRECTIONS, BASELINE) == pytest.approx(expected)


def test_history_grows_with_each_feasible_trial_and_counts_every_finished_one():
    def record(i, values, *, status=COMPLETED, feasible=None):
        return TrialRecord(f"t{i}", status, metrics=dict(zip(NAMES, values)), feasible=feasible, finished_at=100.0 + i)

    records = [record(0, [0.5, 12e6, 6.0]), record(1, [0, 0, 0], status=FAILED),
               record(2, [0.6, 6e6, 3.0], feasible=False), record(3, [0.6, 6e6, 3.0])]
    rows = history(records, names=NAMES, directions=DIRECTIONS, baseline=dict(zip(NAMES, BASELINE)), started_at=100.0)
    assert [r["trials"] for r in rows] == [1, 2, 3, 4] and [r["seconds"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    hv = [r["hypervolume"] for r in rows]
    assert hv[0] > 0 and hv[0] == hv[1] == hv[2] < hv[3]  # the failed and the infeasible add nothing
    assert hv[3] == pytest.approx(hypervolume(np.array([[0.5, 12e6, 6.0], [0.6, 6e6, 3.0]]), DIRECTIONS, BASELINE), abs=1e-6)
