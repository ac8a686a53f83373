"""The baseline every trial is judged against, and the limits a user says a trial must meet.

The baseline is the uncompressed float32 base model at the base resolution, converted and
measured exactly like a trial (``search.trial.run_baseline``), recorded as trial ``baseline``.
Each trial then also records how it compares (``COMPARISONS``: accuracy drops in points, size and
latency as ratios), and whether it meets the space's ``constraints:`` (``Constraint``), which the
sampler learns (each Optuna trial is told its violations, ``Trial.set_constraint``) and the front
and the export honour.

TensorFlow-free: the space validator reads ``COMPARISONS`` for the names a constraint may use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

BASELINE_ID = "baseline"
BASELINE_MODE = "float32"  # uncompressed: what every compression is judged against


@dataclass(frozen=True)
class Comparison:
    """A number a trial gets from the baseline's: ``drop`` in points, or ``ratio`` trial / baseline."""

    metric: str
    kind: str  # "drop" (accuracy lost, x100, positive = worse) or "ratio"
    description: str

    def of(self, value: float, baseline: float) -> float:
        if self.kind == "drop":
            return round((baseline - value) * 100.0, 4)
        return value / baseline if baseline else math.inf


COMPARISONS: dict[str, Comparison] = {
    "map50_drop": Comparison("map50", "drop", "mAP@0.5 points lost against the baseline"),
    "map_drop": Comparison("map", "drop", "mAP@[.5:.95] points lost against the baseline"),
    "size_ratio": Comparison("size_bytes", "ratio", "size against the baseline's"),
    "latency_ratio": Comparison("latency_ms", "ratio", "latency against the baseline's (on the same node kind)"),
}


def compare(metrics: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, float]:
    """Every comparison both the trial and the baseline have the numbers for."""
    if not baseline:
        return {}
    return {name: c.of(float(metrics[c.metric]), float(baseline[c.metric])) for name, c in COMPARISONS.items()
            if metrics.get(c.metric) is not None and baseline.get(c.metric) is not None}


@dataclass(frozen=True)
class Constraint:
    """``<bound>_<metric>: limit`` in a space's ``constraints:``, e.g. ``max_size_bytes: 6000000``."""

    metric: str  # an objective's name or a comparison's (``COMPARISONS``)
    bound: str  # "max" or "min"
    limit: float

    @property
    def key(self) -> str:
        return f"{self.bound}_{self.metric}"

    def violation(self, metrics: dict[str, Any]) -> float:
        """How far past the limit (Optuna's convention: <= 0 is feasible); a missing value is infeasible."""
        value = metrics.get(self.metric)
        if value is None:
            return math.inf
        return float(value) - self.limit if self.bound == "max" else self.limit - float(value)


def violations(metrics: dict[str, Any], constraints: Sequence[Constraint]) -> dict[str, float]:
    """``{constraint key: violation}`` (<= 0 feasible), as Optuna's ``Trial.set_constraint`` takes them."""
    return {c.key: c.violation(metrics) for c in constraints}


def judge(record, *, baseline: dict[str, Any] | None, constraints: Sequence[Constraint]):
    """``record`` with its comparisons to the baseline added and its feasibility set (None: no constraints)."""
    metrics = {**record.metrics, **compare(record.metrics, baseline)}
    feasible = all(v <= 0 for v in violations(metrics, constraints).values()) if constraints else None
    return replace(record, metrics=metrics, feasible=feasible)
