"""The ``latency`` measurement: median and p90 latency of one invoke in the LiteRT interpreter.

Drift-free: invokes of the trial's model alternate with invokes of a fixed reference model on the
same pinned cores, and ``latency_ms`` is the median per-pair ratio times the reference's latency
on the node, measured once, long, and kept on the node (``search.timing``: ``interleaved``,
``reference``; the absolute timing behind the reference's number is ``search.timing.absolute``).
The model's own raw median stays beside it (``latency_raw_ms``), with the ratio and the
reference's numbers, so a reader sees how much the host drifted meanwhile.
"""

from __future__ import annotations

from typing import Any

from search.objectives.objective import Artifact, MeasureContext, Measurement
from search.provenance import cpu_model
from search.timing.absolute import LatencyStats, measure_latency, quiet_half

__all__ = ["MEASUREMENT", "LatencyStats", "cpu_model", "measure_latency", "quiet_half"]


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    """Median and p90 latency of one invoke, drift-free: interleaved with the reference, as a ratio
    times the reference's latency on this node (the node is ours meanwhile: the caller's lock)."""
    from search.timing.interleaved import measure_interleaved
    from search.timing.reference import node_reference_latency, reference_model

    m = context.measure
    reference = context.reference or reference_model()  # the driver ships it; alone (tests, benchmarks) built here
    node = node_reference_latency(reference, num_threads=m.latency_threads, seconds=m.latency_reference_seconds)
    stats = measure_interleaved(artifact.content, reference, num_threads=m.latency_threads, warmup=m.latency_warmup,
                                min_runs=m.latency_min_runs, min_seconds=m.latency_min_seconds,
                                max_seconds=m.latency_max_seconds)
    return {
        "latency_ms": stats.ratio * node.median_ms, "latency_p90_ms": stats.ratio_p90 * node.median_ms,
        "latency_raw_ms": stats.median_ms, "latency_ref_ratio": stats.ratio, "latency_ref_ms": node.median_ms,
        "latency_ref_window_ms": stats.reference_median_ms, "latency_ref_sha256": node.sha256,
        "latency_spread": stats.spread, "latency_runs": stats.pairs, "latency_threads": stats.num_threads,
        "latency_cpus": stats.cpus, "latency_litert": node.litert, "cpu_model": cpu_model(),
        "latency_machine": machine_line(),
    }


def machine_line() -> str:
    """Architecture, cores and OS of this node, in one cell (the CPU model is a column of its own)."""
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def how(m, metrics: dict[str, Any]) -> str:
    return (f"LiteRT {metrics.get('latency_litert')} interpreter (XNNPACK) on {metrics.get('cpu_model')} "
            f"({metrics.get('latency_machine')}), "
            f"{metrics.get('latency_threads')} thread(s) pinned to core(s) {metrics.get('latency_cpus') or '?'}, no other "
            f"trial computing on the node (node lock): {m.latency_warmup} warm-up invokes, then "
            f"{metrics.get('latency_runs')} pairs of invokes over at least {m.latency_min_seconds:g} s alternating this "
            f"model and the latency reference (sha256 {str(metrics.get('latency_ref_sha256'))[:16]}...: "
            f"{reference_recipe()}); latency_ms = the median per-pair ratio ({_fmt(metrics.get('latency_ref_ratio'))}) "
            f"x the reference's latency on this node ({_fmt(metrics.get('latency_ref_ms'))} ms, measured once over "
            f"{m.latency_reference_seconds:g} s and kept on the node), p90 likewise; latency_raw_ms is the model's own "
            f"median in the window ({_fmt(metrics.get('latency_raw_ms'))} ms; the reference's there: "
            f"{_fmt(metrics.get('latency_ref_window_ms'))} ms)")


def _fmt(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) else "?"


def reference_recipe() -> str:
    from search.timing.reference import recipe_text

    return recipe_text()


DETAILS = ("latency_raw_ms", "latency_ref_ratio", "latency_ref_ms", "latency_ref_window_ms", "latency_ref_sha256",
           "latency_spread", "latency_runs", "latency_threads", "latency_cpus", "latency_litert", "cpu_model",
           "latency_machine")
MEASUREMENT = Measurement("latency", values=("latency_ms", "latency_p90_ms"), how=how, details=DETAILS,
                          measure=measure, alone=True)
