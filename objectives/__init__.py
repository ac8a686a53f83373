"""What a trial can be judged by: one table, read by the space validator, the tuner, the Pareto
computation, the report and the export card.

The measuring code lives beside this file: ``accuracy`` (mAP with pycocotools), ``size`` (raw and
gzip bytes of the ``.tflite`` file) and ``latency`` (LiteRT interpreter timings). This module
imports none of them, so validating a space file stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass

MAXIMIZE = "maximize"
MINIMIZE = "minimize"
DIRECTIONS = (MAXIMIZE, MINIMIZE)


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # the natural one; a space file may only repeat it, never flip it
    kind: str  # "accuracy", "size" or "latency": which axis of the Pareto plots it belongs on
    unit: str
    description: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("map50", MAXIMIZE, "accuracy", "", "mAP@0.5 of the converted model on the val split (pycocotools)"),
        Objective("map", MAXIMIZE, "accuracy", "", "mAP@[.5:.95] of the converted model on the val split (pycocotools)"),
        Objective("size_bytes", MINIMIZE, "size", "bytes", "size of the .tflite file"),
        Objective("size_gzip_bytes", MINIMIZE, "size", "bytes", "size of the .tflite file after gzip (level 6; shows unstructured sparsity)"),
        Objective("latency_ms", MINIMIZE, "latency", "ms", "median latency of one invoke in the LiteRT interpreter"),
        Objective("latency_p90_ms", MINIMIZE, "latency", "ms", "90th-percentile latency of one invoke in the LiteRT interpreter"),
        # Only resolution changes it (TFLite's CPU kernels compute zeroed weights all the same): a
        # machine-independent cost when resolution is searched, flat otherwise.
        Objective("macs", MINIMIZE, "latency", "MACs", "multiply-accumulates of one forward pass at the trial's resolution (dense count)"),
    )
}

__all__ = ["DIRECTIONS", "MAXIMIZE", "MINIMIZE", "OBJECTIVES", "Objective"]
