"""Step 4: measure the converted model, by every measurement the space's objectives need.

Each measurement (``search.objectives``) runs once however many objectives it yields; one that
times (``alone``) runs with the node to itself, which the caller's ``guard`` provides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search.objectives import Artifact, MeasureContext, measurements_for


def measure(artifact: Artifact, context: MeasureContext, names: Sequence[str], *, guard, timer) -> tuple[dict[str, Any], float]:
    """Every value and detail of the measurements behind ``names``, and the seconds waited for the
    node before the measurements that need it alone."""
    metrics: dict[str, Any] = {}
    waited = 0.0
    for measurement in measurements_for(names):
        with guard(alone=measurement.alone) as wait_s, timer(measurement.name):
            waited += wait_s
            values = measurement.measure(artifact, context)
        if set(values) != set(measurement.columns):
            raise RuntimeError(f"measurement {measurement.name!r} must return {sorted(measurement.columns)}, "
                               f"but got {sorted(values)}")
        metrics.update(values)
    return metrics, round(waited, 3)
