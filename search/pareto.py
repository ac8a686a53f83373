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
    """What an export rule sees: every completed trial's objective values, and the front."""

    values: np.ndarray  # (trials, objectives)
    names: tuple[str, ...]
    directions: tuple[str, ...]
    front: list[int]
    accuracy: str  # the accuracy objective the rule ranks by
    limits: dict[str, float]  # metric -> the most a trial may have (within_limits)
    metrics: Sequence[dict]  # every trial's recorded metrics (limits may name non-objectives)

    def accuracy_of(self, i: int) -> float:
        return float(self.values[i, self.names.index(self.accuracy)])


def _max_accuracy(c: Candidates) -> int | None:
    return max(c.front, key=lambda i: (c.accuracy_of(i), -i))


def _within_limits(c: Candidates) -> int | None:
    # Any trial, not only the front: the most accurate trial within limits is on the front of
    # the constrained problem even when a faster, larger trial dominates it unconstrained.
    fits = [i for i in range(len(c.values))
            if all(name in c.metrics[i] and float(c.metrics[i][name]) <= limit for name, limit in c.limits.items())]
    return max(fits, key=lambda i: (c.accuracy_of(i), -i)) if fits else None


def _knee(c: Candidates) -> int | None:
    costs = _as_minimization(c.values[c.front], c.directions)
    low, high = costs.min(axis=0), costs.max(axis=0)
    scaled = (costs - low) / np.where(high > low, high - low, 1.0)  # 0 best .. 1 worst, so no unit dominates
    return c.front[int(np.argmin(np.linalg.norm(scaled, axis=1)))]


@dataclass(frozen=True)
class ExportRule:
    description: str
    pick: Callable[[Candidates], int | None]  # index into the completed trials, None when none qualifies


EXPORT_RULES: dict[str, ExportRule] = {
    "knee": ExportRule("the front trial closest (Euclidean) to the ideal point, each objective scaled to 0..1 over "
                       "the front", _knee),
    "max_accuracy": ExportRule("the front trial with the highest accuracy objective", _max_accuracy),
    "within_limits": ExportRule("the most accurate trial within max_size_bytes and max_latency_ms", _within_limits),
}


# --- the front of a search -----------------------------------------------------------------------


@dataclass(frozen=True)
class Front:
    """The completed trials, which of them are on the front, and which the export rule picked."""

    completed: tuple[TrialRecord, ...]  # in the order they finished
    members: tuple[int, ...]  # indices into ``completed`` of the non-dominated trials
    exported: int | None  # index into ``completed`` of the trial the export rule picked

    @property
    def records(self) -> list[TrialRecord]:
        return [self.completed[i] for i in self.members]

    @property
    def exported_record(self) -> TrialRecord | None:
        return None if self.exported is None else self.completed[self.exported]


def compute_front(records: Sequence[TrialRecord], *, objectives: Sequence, rule: str, accuracy: str,
                  limits: dict[str, float]) -> Front:
    """The front of ``records`` over ``objectives`` (``ObjectiveSpec``s), and the pick of ``rule``."""
    completed = tuple(r for r in records if r.completed)
    names, directions = tuple(o.name for o in objectives), tuple(o.direction for o in objectives)
    values = np.asarray([[r.value(n) for n in names] for r in completed], dtype=float).reshape(len(completed), len(names))
    members = pareto_front(values, directions)
    exported = None
    if members:
        candidates = Candidates(values, names, directions, members, accuracy, limits, [r.metrics for r in completed])
        exported = EXPORT_RULES[rule].pick(candidates)
    return Front(completed, tuple(members), exported)
