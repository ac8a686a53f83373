"""The objectives table: what a trial can be judged by, and which measurement yields each value.

Read by the space validator, the trial (which runs the measurements the space needs), the
recorder (one column per value and detail), the Pareto front, the report and the export card.
To add an objective: a module beside this one with its ``MEASUREMENT``, and one row here.
"""

from __future__ import annotations

from search.objectives import accuracy, latency, macs, memory, params, size
from search.objectives.objective import MAXIMIZE, MINIMIZE, Measurement, Objective

OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("map50", MAXIMIZE, "accuracy", "mAP@0.5 of the converted model on the val split (pycocotools)",
                  accuracy.MEASUREMENT),
        Objective("map", MAXIMIZE, "accuracy", "mAP@[.5:.95] of the converted model on the val split (pycocotools)",
                  accuracy.MEASUREMENT),
        Objective("size_bytes", MINIMIZE, "size", "size of the .tflite file", size.MEASUREMENT),
        Objective("size_gzip_bytes", MINIMIZE, "size",
                  "size of the .tflite file after gzip (level 6; shows unstructured sparsity)", size.MEASUREMENT),
        Objective("latency_ms", MINIMIZE, "latency", "median latency of one invoke in the LiteRT interpreter",
                  latency.MEASUREMENT),
        Objective("latency_p90_ms", MINIMIZE, "latency",
                  "90th-percentile latency of one invoke in the LiteRT interpreter", latency.MEASUREMENT),
        Objective("memory_bytes", MINIMIZE, "size",
                  "peak resident memory added by loading, allocating and invoking the model (LiteRT, fresh process)",
                  memory.MEASUREMENT),
        # Only the architecture and resolution change it (TFLite's CPU kernels compute zeroed
        # weights all the same): a machine-independent cost.
        Objective("macs", MINIMIZE, "latency",
                  "multiply-accumulates of one forward pass at the trial's resolution (dense count)", macs.MEASUREMENT),
        # Weights a dense kernel stores: what pruning that removes filters shrinks.
        Objective("params", MINIMIZE, "size", "parameters of the converted network (dense count)", params.MEASUREMENT),
    )
}


def measurements_for(names) -> list[Measurement]:
    """The measurements that yield ``names`` (objective names), each once, in table order."""
    needed: list[Measurement] = []
    for name in names:
        measurement = OBJECTIVES[name].measurement
        if measurement not in needed:
            needed.append(measurement)
    return needed


def always_measured() -> list[str]:
    """Objectives every trial measures whatever the space names (``Measurement.always``)."""
    return [name for name, o in OBJECTIVES.items() if o.measurement.always]


def recorded_columns() -> tuple[str, ...]:
    """Every column a measurement can write, values then details, in table order."""
    columns: list[str] = []
    for measurement in measurements_for(OBJECTIVES):
        columns += [c for c in measurement.columns if c not in columns]
    return tuple(columns)


def unrecordable(names) -> list[str]:
    """Objectives among ``names`` whose measurement does not declare them: they could not be recorded."""
    return [name for name in names if name not in OBJECTIVES[name].measurement.values]
