"""Latency targets: the nodes a latency is measured on, and the objectives each adds.

``host`` is the trial's own node (the plain ``latency_ms``, ``latency_p90_ms``). Every other target
of ``measure.targets`` names a Ray custom resource that the user's device offers when it joins the
cluster (``ray start --address HEAD:6379 --resources '{"device:rpi5": 1}' --num-cpus 0``), and adds
the objectives ``<value>@<target>`` for each of ``TARGET_VALUES``, usable in ``objectives:`` and
``constraints:`` like any other. They are measured on that node by a Ray task (``search.targets``),
not in the trial's pipeline, so their measurement here only describes the columns.

TensorFlow-free and Ray-free: the space validator reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from search.objectives.objective import MINIMIZE, Measurement, Objective

HOST = "host"  # the trial's own node: its objectives are the unsuffixed names
SEPARATOR = "@"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")

# value -> (Pareto axis, description): what each non-host target adds as objectives.
TARGET_VALUES: dict[str, tuple[str, str]] = {
    "latency_ms": ("latency", "median latency of one invoke on the target's node (ratio to the latency reference, "
                              "interleaved, x the reference's latency there)"),
    "latency_p90_ms": ("latency", "90th-percentile latency of one invoke on the target's node (as latency_ms)"),
    "memory_bytes": ("size", "peak resident memory added by loading, allocating and invoking the model, in a "
                             "fresh process on the target's node"),
}
# How each target's values were taken: recorded beside them, suffixed @<target> like them.
TARGET_DETAILS = ("latency_raw_ms", "latency_ref_ratio", "latency_ref_ms", "latency_ref_sha256",
                  "latency_ref_resolution", "latency_ref_mode", "latency_ref_link", "latency_anchor_ms", "latency_runs", "latency_spread",
                  "latency_cpus", "peak_rss_bytes", "cpu_model", "cores", "arch", "os", "host", "litert", "delegate",
                  "threads", "node", "error")


@dataclass(frozen=True)
class Target:
    """One entry of ``measure.targets``: a name, and the Ray resource its node offers (None: host)."""

    name: str
    resource: str | None = None


DEFAULT_TARGETS = (Target(HOST),)


def _not_in_a_trial(artifact, context) -> dict[str, Any]:
    raise RuntimeError("a target's values are measured on its own node by search.targets, not in the trial")


def _how(m, metrics: dict[str, Any]) -> str:
    return ("on the target's own node (a Ray task asking for its resource), as on a search node: invokes "
            "alternated with the latency reference at the model's resolution and reference mode, latency_ms = median ratio x that "
            "reference's latency on that node (its ratio to the anchor there x the anchor's); memory_bytes: peak "
            "resident memory added by loading, allocating and invoking, in a fresh process")


MEASUREMENT = Measurement("target", values=tuple(TARGET_VALUES), details=TARGET_DETAILS, measure=_not_in_a_trial,
                          how=_how)


def column(value: str, target: str) -> str:
    return f"{value}{SEPARATOR}{target}"


def split(name: str) -> tuple[str, str | None]:
    """``"latency_ms@rpi5"`` -> ``("latency_ms", "rpi5")``; a plain name -> ``(name, None)``."""
    value, sep, target = name.partition(SEPARATOR)
    return (value, target) if sep else (name, None)


def target_objectives(targets) -> dict[str, Objective]:
    """The objectives every non-host target adds, by name (``latency_ms@rpi5``, ...)."""
    rows = {}
    for target in targets:
        if target.resource is None:
            continue
        for value, (kind, description) in TARGET_VALUES.items():
            name = column(value, target.name)
            rows[name] = Objective(name, MINIMIZE, kind, f"{description} ({target.name}: {target.resource})",
                                   MEASUREMENT)
    return rows


def target_columns(target: str) -> tuple[str, ...]:
    """Every column a target writes, values then details."""
    return tuple(column(c, target) for c in (*TARGET_VALUES, *TARGET_DETAILS))
