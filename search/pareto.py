"""The Pareto front of completed trials, and the rules that pick one trial of it to export.

Data only: ``pareto_front`` returns indices, ``Front`` is the value the table, the plots and the
export consume (as Optuna keeps ``_get_pareto_front_info`` apart from drawing), and
``EXPORT_RULES`` is the one table of export rules, read by the space validator and the card. A
test checks ``pareto_front`` against Optuna's own ``best_trials`` on the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from search.record import TrialRecord


def _as_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * signs


def pareto_front(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated rows of ``values`` (one row per trial, one column per objective).

    Row a dominates row b when a is at least as good in every objective and better in one, as in
    Optuna. Rows with equal values are all kept. ``directions`` holds "maximize"/"minimize".
    """
    points = np.asarray(values, dtype=float)
    if points.size == 0:
        return []
    if points.ndim != 2 or points.shape[1] != len(directions):
        raise ValueError(f"values must have one column per direction ({len(directions)}), but got shape {points.shape}.")
    costs = _as_minimization(points, directions)
    front = []
    for i, row in enumerate(costs):
        no_worse = np.all(costs <= row, axis=1)
        better = np.any(costs < row, axis=1)
        if not np.any(no_worse & better):
            front.append(i)
    return front


# --- export rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """What an export rule sees: every completed, feasible trial's objective values, and the front."""

    values: np.ndarray  # (trials, objectives)
    names: tuple[str, ...]
    directions: tuple[str, ...]
    front: list[int]
    accuracy: str  # the accuracy objective the rule ranks by
    limits: dict[str, float]  # metric -> the most a trial may have (within_limits)
    metrics: Sequence[dict]  # every trial's recorded metrics (limits may name non-objectives)
    baseline: dict | None = None  # the baseline's metrics (accuracy_budget)
    max_drop: float = 1.0  # accuracy_budget: points of accuracy a trial may lose against the baseline
    prefer: tuple[str, ...] = ()  # accuracy_budget: metrics to minimise within the budget, in order
    allowed: tuple[int, ...] | None = None  # the feasible trials (None: all)

    def accuracy_of(self, i: int) -> float:
        return float(self.values[i, self.names.index(self.accuracy)])


Pick = tuple[int | None, str]  # (index into the trials, or None; why, in one line)


def _most_accurate(c: Candidates, among: Sequence[int]) -> int | None:
    return max(among, key=lambda i: (c.accuracy_of(i), -i)) if among else None


def _max_accuracy(c: Candidates) -> Pick:
    return _most_accurate(c, c.front), f"the most accurate front trial ({c.accuracy})"


def _within_limits(c: Candidates) -> Pick:
    # Any trial, not only the front: the most accurate trial within limits is on the front of
    # the constrained problem even when a faster, larger trial dominates it unconstrained.
    fits = [i for i in (range(len(c.values)) if c.allowed is None else c.allowed)
            if all(name in c.metrics[i] and float(c.metrics[i][name]) <= limit for name, limit in c.limits.items())]
    limits = ", ".join(f"{name} <= {limit:g}" for name, limit in c.limits.items())
    return _most_accurate(c, fits), f"the most accurate trial with {limits}" if fits else f"no trial has {limits}"


def _accuracy_budget(c: Candidates) -> Pick:
    """Among front trials within ``max_drop`` points of the baseline, the best on ``prefer``."""
    if not c.baseline or c.accuracy not in c.baseline:
        return _most_accurate(c, c.front), "no baseline was measured: the most accurate front trial"
    floor = float(c.baseline[c.accuracy]) - c.max_drop / 100.0
    within = [i for i in c.front if c.accuracy_of(i) >= floor - 1e-12]
    if not within:
        return _most_accurate(c, c.front), (f"no front trial is within {c.max_drop:g} points of the baseline's "
                                            f"{c.accuracy} {float(c.baseline[c.accuracy]):.3f}: the most accurate")
    best = min(within, key=lambda i: (*(float(c.metrics[i].get(m, np.inf)) for m in c.prefer), -c.accuracy_of(i), i))
    return best, (f"the front trial best on {', then '.join(c.prefer) or c.accuracy} among the {len(within)} within "
                  f"{c.max_drop:g} points of the baseline's {c.accuracy} {float(c.baseline[c.accuracy]):.3f}")


def relative_costs(values: np.ndarray, directions: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Each objective as a log ratio to the best on the front (0 = the best, 1 = e times worse).

    Sizes and latencies are ratios already; an accuracy in [0, 1] is compared by its error,
    1 - accuracy, so going from mAP 0.80 to 0.27 (3.7x the error) weighs about as much as a
    3.7x slower model, and a few percent of size never outweighs a factor of three.
    """
    costs = np.empty_like(values, dtype=float)
    for j, direction in enumerate(directions):
        column = values[:, j].astype(float)
        loss = 1.0 - column if direction == "maximize" else column
        loss = np.maximum(loss, 1e-9)
        costs[:, j] = np.log(loss / loss.min())
    return costs


def _knee(c: Candidates) -> Pick:
    costs = relative_costs(c.values[c.front], c.directions, c.names)
    i = c.front[int(np.argmin(np.linalg.norm(costs, axis=1)))]
    return i, "the front trial closest to the ideal point on log-ratio scales"


@dataclass(frozen=True)
class ExportRule:
    description: str
    pick: Callable[[Candidates], Pick]


EXPORT_RULES: dict[str, ExportRule] = {
    "accuracy_budget": ExportRule(
        "among front trials within export.max_drop points (default 1.0) of the baseline's accuracy, the best on "
        "export.prefer (default latency, then size); when none is within the budget, the most accurate",
        _accuracy_budget),
    "knee": ExportRule("the front trial closest (Euclidean) to the ideal point, each objective as a log ratio to "
                       "the front's best (accuracies by their error, 1 - mAP)", _knee),
    "max_accuracy": ExportRule("the front trial with the highest accuracy objective", _max_accuracy),
    "within_limits": ExportRule("the most accurate trial within max_size_bytes and max_latency_ms", _within_limits),
}


# --- the front of a search -----------------------------------------------------------------------


@dataclass(frozen=True)
class Front:
    """The completed trials, which of them are on the front, and which the export rule picked."""

    completed: tuple[TrialRecord, ...]  # in the order they finished, feasible or not
    members: tuple[int, ...]  # indices into ``completed`` of the non-dominated feasible trials
    exported: int | None  # index into ``completed`` of the trial the export rule picked
    baseline: TrialRecord | None = None
    note: str = ""  # why the rule picked what it picked

    @property
    def records(self) -> list[TrialRecord]:
        return [self.completed[i] for i in self.members]

    @property
    def exported_record(self) -> TrialRecord | None:
        return None if self.exported is None else self.completed[self.exported]

    @property
    def infeasible(self) -> list[int]:
        return [i for i, r in enumerate(self.completed) if r.feasible is False]


def compute_front(records: Sequence[TrialRecord], *, objectives: Sequence, export, baseline: TrialRecord | None = None,
                  prefer: Sequence[str] = ()) -> Front:
    """The front of the feasible ``records`` over ``objectives`` (``ObjectiveSpec``s), and the pick
    of ``export`` (the space's ``ExportSpec``); ``prefer``: accuracy_budget's metrics, in order."""
    completed = tuple(r for r in records if r.completed)
    feasible = [i for i, r in enumerate(completed) if r.feasible is not False]
    names, directions = tuple(o.name for o in objectives), tuple(o.direction for o in objectives)
    values = np.asarray([[r.value(n) for n in names] for r in completed], dtype=float).reshape(len(completed), len(names))
    members = [feasible[i] for i in pareto_front(values[feasible], directions)]
    exported, note = None, "no completed feasible trial"
    if members:
        candidates = Candidates(values, names, directions, members, export.accuracy, export.limits,
                                [r.metrics for r in completed], baseline.metrics if baseline else None,
                                export.max_drop, tuple(prefer), tuple(feasible))
        exported, note = EXPORT_RULES[export.rule].pick(candidates)
    return Front(completed, tuple(members), exported, baseline, note)
