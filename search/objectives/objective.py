"""What an objective is: a name, a direction, and the measurement that produces its value.

A ``Measurement`` is one way of looking at a converted model that yields one or more values at
once (one pycocotools evaluation gives both mAPs; one timing gives the median and the p90) and the
details of how it was taken (``details``), recorded beside the values. Each objective names the
measurement that yields it, so the trial runs each needed measurement once, and the recorder
knows every column before anything runs.

Nothing here imports TensorFlow, LiteRT or pycocotools: the space validator reads the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.data.dataset import Dataset
    from search.models.family import YoloHeads
    from search.space import MeasureSpec
    from search.timing.rungs import LatencyReferences

MAXIMIZE = "maximize"
MINIMIZE = "minimize"
DIRECTIONS = (MAXIMIZE, MINIMIZE)


@dataclass(frozen=True)
class Artifact:
    """What a measurement looks at: the converted flatbuffer and the Keras model it was made from."""

    content: bytes  # the .tflite flatbuffer, exactly as written to model.tflite
    model: Any  # the Keras model that was converted (its architecture and resolution)
    resolution: int
    mode: str  # the quantization mode that made ``content``


@dataclass(frozen=True)
class MeasureContext:
    """What a measurement may read besides the artifact: the data and the space's settings."""

    dataset: Dataset
    measure: MeasureSpec  # thresholds for mAP, latency settings
    preprocessing: str
    heads: YoloHeads  # how the raw outputs decode into boxes
    num_threads: int  # threads the trial may use outside the latency measurement
    # The latency reference's rungs (search.timing.rungs), built once by the driver so that every
    # node times the same files; None: the latency measurement builds the one it needs where it runs.
    reference: LatencyReferences | None = None


@dataclass(frozen=True)
class Measurement:
    """One way of measuring an artifact: ``measure(artifact, context)`` returns a dict holding
    exactly ``values`` (objective values) and ``details`` (how they were taken)."""

    name: str
    values: tuple[str, ...]
    details: tuple[str, ...]
    measure: Callable[[Artifact, MeasureContext], dict[str, Any]]
    # how(measure settings, the trial's recorded metrics) -> one sentence for the export card
    how: Callable[[MeasureSpec, dict[str, Any]], str]
    alone: bool = False  # must have the node to itself while it runs (timing)
    # Measured in every trial, named by the space or not: a count that costs milliseconds and
    # explains the others (a pruned trial's params, a resolution's MACs).
    always: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.values, *self.details)


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # the natural one; a space file may only repeat it, never flip it
    kind: str  # "accuracy", "size" or "latency": which axis of the Pareto plots it belongs on
    description: str
    measurement: Measurement  # yields this objective's value among its ``values``
