"""The ``latency`` measurement: median and p90 latency of one invoke in the LiteRT interpreter.

Drift-free: invokes of the trial's model alternate with invokes of a fixed reference model, built
at the trial's resolution in its mode's reference mode (int8, or float32 for float activations:
its rung), on the same pinned cores, and ``latency_ms`` is the median
per-pair ratio times the rung's latency on the node: the rung's ratio to the anchor (the 256 px
rung) there, measured once, times the anchor's latency there, measured once, long, both kept on
the node (``search.timing``: ``interleaved``, ``reference``, ``rungs``; the absolute timing behind
the anchor's number is ``search.timing.absolute``). The model's own raw median stays beside it
(``latency_raw_ms``), with the ratio and the references' numbers, so a reader sees how much the
host drifted meanwhile.
"""

from __future__ import annotations

from typing import Any

from search.objectives.objective import Artifact, MeasureContext, Measurement
from search.provenance import cpu_model
from search.timing.absolute import LatencyStats, measure_latency, quiet_half

__all__ = ["MEASUREMENT", "LatencyStats", "cpu_model", "measure_latency", "quiet_half"]


def measure(artifact: Artifact, context: MeasureContext) -> dict[str, Any]:
    """Median and p90 latency of one invoke, drift-free: interleaved with the rung of the trial's
    resolution and reference mode, as a ratio times that rung's latency on this node (the node is
    ours meanwhile: the caller's lock)."""
    from search.timing.interleaved import measure_interleaved
    from search.timing.reference import reference_mode
    from search.timing.rungs import latency_references, node_rung_latency

    m = context.measure
    mode = reference_mode(artifact.mode)
    # The driver ships the rungs; alone (tests, benchmarks) the one needed is built here.
    references = context.reference or latency_references([(artifact.resolution, mode)])
    rung = references.rung_for(artifact.resolution, mode)
    node = node_rung_latency(rung, references.anchor_rung.content, num_threads=m.latency_threads,
                             seconds=m.latency_reference_seconds)
    stats = measure_interleaved(artifact.content, rung.content, num_threads=m.latency_threads, warmup=m.latency_warmup,
                                min_runs=m.latency_min_runs, min_seconds=m.latency_min_seconds,
                                max_seconds=m.latency_max_seconds)
    return {
        "latency_ms": stats.ratio * node.median_ms, "latency_p90_ms": stats.ratio_p90 * node.median_ms,
        "latency_raw_ms": stats.median_ms, "latency_ref_ratio": stats.ratio, "latency_ref_ms": node.median_ms,
        "latency_ref_window_ms": stats.reference_median_ms, "latency_ref_sha256": node.sha256,
        "latency_ref_resolution": node.resolution, "latency_ref_mode": node.mode, "latency_ref_link": node.link,
        "latency_anchor_ms": node.anchor.median_ms,
        "latency_spread": stats.spread, "latency_runs": stats.pairs, "latency_threads": stats.num_threads,
        "latency_cpus": stats.cpus, "latency_litert": node.anchor.litert, "cpu_model": cpu_model(),
        "latency_machine": machine_line(),
    }


def machine_line() -> str:
    """Architecture, cores and OS of this node, in one cell (the CPU model is a column of its own)."""
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def how(m, metrics: dict[str, Any]) -> str:
    from search.timing.interleaved import SESSIONS, TURN_MS  # here: reading the objectives table stays cheap
    from search.timing.reference import ANCHOR, ANCHOR_MODE, recipe_text

    return (f"LiteRT {metrics.get('latency_litert')} interpreter (XNNPACK) on {metrics.get('cpu_model')} "
            f"({metrics.get('latency_machine')}), "
            f"{metrics.get('latency_threads')} thread(s) pinned to core(s) {metrics.get('latency_cpus') or '?'}, no other "
            f"trial computing on the node (node lock): {m.latency_warmup} warm-up invokes, then "
            f"{metrics.get('latency_runs')} pairs of turns over at least {m.latency_min_seconds:g} s alternating this "
            f"model and the latency reference matched to its resolution and mode (every other pair the reference "
            f"first), each turn ~{TURN_MS:g} ms of its untimed invokes then ~{TURN_MS:g} ms timed, its median taken, "
            f"the window split over {SESSIONS} fresh pairs of interpreters (sha256 "
            f"{str(metrics.get('latency_ref_sha256'))[:16]}...: "
            f"{recipe_text(metrics.get('latency_ref_resolution'), metrics.get('latency_ref_mode'))}); "
            f"latency_ms = the median per-pair ratio ({_fmt(metrics.get('latency_ref_ratio'))}) x the reference's "
            f"latency on this node ({_fmt(metrics.get('latency_ref_ms'))} ms: its ratio to the anchor "
            f"there, interleaved, {_fmt(metrics.get('latency_ref_link'))}, x the anchor's ({ANCHOR} px {ANCHOR_MODE}) "
            f"latency there, {_fmt(metrics.get('latency_anchor_ms'))} ms; each measured once over "
            f"{m.latency_reference_seconds:g} s and kept on the node), p90 likewise; latency_raw_ms is the model's "
            f"own median in the window ({_fmt(metrics.get('latency_raw_ms'))} ms; the reference's there: "
            f"{_fmt(metrics.get('latency_ref_window_ms'))} ms)")


def _fmt(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) else "?"


DETAILS = ("latency_raw_ms", "latency_ref_ratio", "latency_ref_ms", "latency_ref_window_ms", "latency_ref_sha256",
           "latency_ref_resolution", "latency_ref_mode", "latency_ref_link", "latency_anchor_ms", "latency_spread", "latency_runs",
           "latency_threads", "latency_cpus", "latency_litert", "cpu_model", "latency_machine")
MEASUREMENT = Measurement("latency", values=("latency_ms", "latency_p90_ms"), how=how, details=DETAILS,
                          measure=measure, alone=True)
