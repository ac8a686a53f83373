"""How good a search was: the hypervolume of its front, against a reference point set by the baseline.

Each objective becomes a loss relative to the baseline (``search.baseline``), so that units and
scales drop out and the number means the same in every run of a space:

- an accuracy (maximised) becomes ``1 - value / baseline``: 0 at the baseline's accuracy, 1 at
  none; its reference is 1 (a model that detects nothing adds nothing);
- a size, latency or count (minimised) becomes ``value / baseline``; its reference is
  ``REFERENCE_RATIO`` (a trial twice as large or slow as the uncompressed model adds nothing).

The hypervolume is Optuna's own (``optuna._hypervolume.compute_hypervolume``) of those losses
against that point; points outside the reference box add nothing. With the default objectives
(mAP@0.5, size, latency) a front holding the baseline alone scores 1 x 1 x 1 = 1; a front that
keeps the baseline's accuracy at a quarter of its size and latency scores about 1 x 1.75 x 1.75.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REFERENCE_RATIO = 2.0  # a minimised objective's reference: twice the baseline's value


def relative_losses(values: np.ndarray, directions: Sequence[str], baseline: Sequence[float]) -> np.ndarray:
    """``values`` (trials x objectives) as losses relative to ``baseline`` (see the module docstring)."""
    values = np.asarray(values, dtype=float).reshape(-1, len(directions))
    base = np.asarray(baseline, dtype=float)
    if np.any(base <= 0):
        raise ValueError(f"baseline values must be > 0 to scale by, but got {list(base)}.")
    maximize = np.array([d == "maximize" for d in directions])
    return np.where(maximize, 1.0 - values / base, values / base)


def reference_point(directions: Sequence[str]) -> np.ndarray:
    return np.array([1.0 if d == "maximize" else REFERENCE_RATIO for d in directions])


def hypervolume(values: np.ndarray, directions: Sequence[str], baseline: Sequence[float]) -> float:
    """The hypervolume dominated by ``values`` (any trials; dominated ones add nothing)."""
    from optuna._hypervolume import compute_hypervolume

    losses = relative_losses(values, directions, baseline)
    reference = reference_point(directions)
    inside = losses[np.all(losses < reference, axis=1)]
    return float(compute_hypervolume(inside, reference)) if len(inside) else 0.0


def history(records: Sequence, *, names: Sequence[str], directions: Sequence[str], baseline: dict,
            started_at: float) -> list[dict]:
    """The hypervolume after each completed feasible trial, in the order they finished: one row a
    trial with ``trials`` (finished so far, failed ones included), ``seconds`` (since the search
    started) and ``hypervolume``."""
    base = [float(baseline[n]) for n in names]
    rows, kept = [], []
    ordered = sorted(records, key=lambda r: r.finished_at or 0.0)
    for count, record in enumerate(ordered, start=1):
        if record.completed and record.feasible is not False:
            kept.append([record.value(n) for n in names])
        hv = hypervolume(np.asarray(kept), directions, base) if kept else 0.0
        seconds = round((record.finished_at or started_at) - started_at, 1)
        rows.append({"trials": count, "seconds": seconds, "hypervolume": round(hv, 6), "trial_id": record.trial_id})
    return rows
