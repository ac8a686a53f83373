"""The searcher Tune drives: constraints reach Optuna's sampler, and the study lives in the run directory."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from ray.tune.utils import flatten_dict

from search.space import load_space
from search.study import load_study
from search.tuner import CONSTRAINTS, OptunaSearchWithFailures, journal_storage, make_sampler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def constrained_searcher(tmp_path):
    space = load_space(ROOT / "spaces" / "smoke.yaml", ("constraints.max_size_bytes=10000000", "budget.sampler=nsga2"))
    searcher = OptunaSearchWithFailures(space=space.suggest, metric=space.metric_names, mode=space.modes,
                                        sampler=make_sampler(space), study_name=space.name,
                                        storage=journal_storage(tmp_path))
    return space, searcher


def _tell(searcher, trial_id: str, *, size: float, violation: float | None, error: str = ""):
    searcher.suggest(trial_id)
    result = {"map50": 0.5, "size_bytes": size, "latency_ms": 1.0, "error": error,
              CONSTRAINTS: None if violation is None else [["max_size_bytes", violation]]}
    searcher.on_trial_complete(trial_id, flatten_dict(result))  # as Tune hands results to a searcher


def test_constraints_reach_the_sampler_and_the_study_on_disk(constrained_searcher, tmp_path):
    space, searcher = constrained_searcher
    _tell(searcher, "big", size=2.4e7, violation=1.4e7)
    _tell(searcher, "small", size=6e6, violation=-4e6)
    _tell(searcher, "broken", size=0, violation=None, error="ConversionError: audit failed")

    study = load_study(tmp_path)  # what optuna-dashboard and optuna.load_study open
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [t.values for t in done] == [[0.5, 2.4e7, 1.0], [0.5, 6e6, 1.0]]
    assert all(t.params and "resolution" in t.params for t in done)
    # Each trial carries its violation as Optuna's samplers read it (<= 0: feasible).
    assert [t.constraints for t in done] == [{"max_size_bytes": 1.4e7}, {"max_size_bytes": -4e6}]
    # ... and NSGA-II's selection uses it: the infeasible trial ranks behind the feasible one.
    from optuna.samplers.nsgaii._constraints_evaluation import _evaluate_penalty

    assert list(_evaluate_penalty(done)) == [1.4e7, 0.0]
    assert [t.state.name for t in study.trials][-1] == "FAIL"


def test_the_searcher_survives_tunes_pickling(constrained_searcher):
    _, searcher = constrained_searcher
    _tell(searcher, "a", size=6e6, violation=-4e6)
    restored = pickle.loads(pickle.dumps(searcher))
    assert len(restored._ot_study.trials) == 1
