"""Parameters of the network: the weights a dense kernel stores, whatever the quantization.

Like MACs, a count that needs no timing. Unstructured pruning zeroes weights without removing
them, so it leaves this number as it is; pruning that removes filters shrinks it.
"""

from __future__ import annotations

from typing import Any

from search.objectives.objective import Artifact, MeasureContext, Measurement

__all__ = ["count_params", "MEASUREMENT"]


def count_params(model) -> int:
    """Trainable and non-trainable weights of the Keras ``model`` (BatchNorm statistics included,
    as Darknet's weights file stores them)."""
    return int(model.count_params())


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    return {"params": count_params(artifact.model)}


def how(m, metrics: dict[str, Any]) -> str:
    return "weights of the Keras network that was converted (BatchNorm statistics included), dense count"


MEASUREMENT = Measurement("params", values=("params",), details=(), measure=measure, how=how, always=True)
