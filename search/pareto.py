"""The Pareto front of completed trials, and the rule that picks one trial of it to export.

Data only: ``pareto_front`` returns indices, ``pick_export`` returns one index. The table, the
plots and the export consume these values (as Optuna keeps ``_get_pareto_front_info`` apart from
drawing). A test checks ``pareto_front`` against Optuna's own ``best_trials`` on the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def _scaled(costs: np.ndarray) -> np.ndarray:
    """Each objective to 0 (best on the front) .. 1 (worst), so no unit dominates a distance."""
    low, high = costs.min(axis=0), costs.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (costs - low) / span


EXPORT_RULES = {
    "knee": "the front trial closest (Euclidean) to the ideal point, each objective scaled to 0..1 over the front",
    "max_accuracy": "the front trial with the highest accuracy objective",
    "within_limits": "the most accurate front trial within max_size_bytes and max_latency_ms",
}


def pick_export(
    values: Sequence[Sequence[float]],
    names: Sequence[str],
    directions: Sequence[str],
    *,
    rule: str,
    accuracy: str,
    max_size_bytes: float | None = None,
    max_latency_ms: float | None = None,
    size_bytes: Sequence[float] | None = None,
    latency_ms: Sequence[float] | None = None,
) -> int | None:
    """Index (into ``values``) of the trial to export by ``rule`` (see ``EXPORT_RULES``); None when
    no trial qualifies (an empty front, or nothing within the limits).

    ``size_bytes``/``latency_ms`` give every row's size and latency for ``within_limits`` (they
    need not be objectives).
    """
    if rule not in EXPORT_RULES:
        raise ValueError(f"rule must be one of {sorted(EXPORT_RULES)}, but got {rule!r}.")
    front = pareto_front(values, directions)
    if not front:
        return None
    points = np.asarray(values, dtype=float)
    acc = points[:, list(names).index(accuracy)]
    if rule == "max_accuracy":
        return max(front, key=lambda i: (acc[i], -i))
    if rule == "within_limits":
        def fits(i: int) -> bool:
            ok_size = max_size_bytes is None or (size_bytes is not None and size_bytes[i] <= max_size_bytes)
            ok_latency = max_latency_ms is None or (latency_ms is not None and latency_ms[i] <= max_latency_ms)
            return ok_size and ok_latency

        # Any trial, not only the front: the most accurate trial within limits is on the front of
        # the constrained problem even when a faster, larger trial dominates it unconstrained.
        candidates = [i for i in range(len(points)) if fits(i)]
        return max(candidates, key=lambda i: (acc[i], -i)) if candidates else None
    scaled = _scaled(_as_minimization(points[front], directions))
    distances = np.linalg.norm(scaled, axis=1)
    return front[int(np.argmin(distances))]
