"""Latency relative to a reference: invokes of the model and of the reference, alternated.

The host's speed wanders by 10-16% between 3 s windows, even idle, and hits every model alike.
Timing A, B, A, B ... on the same pinned cores and threads, each pair sees the same moment of the
machine, so the pair's ratio A / B cancels the drift: on this VM the median of the per-pair
ratios of two int8 models spread 1.3% over ten 3 s windows where each model's own median spread
14-16% (timing 0.25 s blocks of each model instead of single invokes: 7.8%, as the drift moves
within a quarter second). The reported latency is that ratio times the reference's latency on
the node (``search.timing.reference``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from search.timing.absolute import check_timing, fixed_input, median_is_stable, pinned

__all__ = ["InterleavedStats", "measure_interleaved"]


@dataclass(frozen=True)
class InterleavedStats:
    ratio: float  # median over pairs of (model's invoke / the reference's invoke right after it)
    ratio_p90: float  # 90th percentile of the same ratios
    median_ms: float  # the model's own invokes, raw (every one): what the drift moves
    p90_ms: float
    reference_median_ms: float  # the reference's invokes in the same window, raw
    spread: float  # (p90 - p10) / median of the model's own invokes: high when something disturbed it
    pairs: int
    seconds: float
    num_threads: int
    cpus: str


def _ready(content: bytes, num_threads: int):
    from search.tflite_model import load_interpreter  # here: reading the objectives table stays cheap

    interpreter = load_interpreter(content, num_threads=num_threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], fixed_input(detail))
    return interpreter


def _timed_pairs(model, reference, *, min_pairs: int, min_seconds: float, max_seconds: float):
    """Alternate single invokes until ``min_pairs`` over ``min_seconds`` with a stable median ratio,
    or ``max_seconds``; returns the model's and the reference's ms per pair and the phase's length."""
    a_ms: list[float] = []
    b_ms: list[float] = []
    ratios: list[float] = []
    clock = time.perf_counter
    begin = clock()
    while True:
        t0 = clock()
        model.invoke()
        t1 = clock()
        reference.invoke()
        t2 = clock()
        a_ms.append((t1 - t0) * 1e3)
        b_ms.append((t2 - t1) * 1e3)
        ratios.append((t1 - t0) / (t2 - t1))
        elapsed = t2 - begin
        if elapsed >= max_seconds:
            break
        if elapsed >= min_seconds and len(ratios) >= min_pairs and median_is_stable(ratios):
            break
    return a_ms, b_ms, ratios, round(clock() - begin, 3)


def measure_interleaved(content: bytes, reference: bytes, *, num_threads: int = 1, warmup: int = 5,
                        min_runs: int = 20, min_seconds: float = 3.0, max_seconds: float = 10.0) -> InterleavedStats:
    """Time ``content`` against ``reference``, invoke by invoke, on ``num_threads`` threads pinned to
    as many cores (both interpreters made while pinned, so their threads stay there too)."""
    check_timing(warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds)
    with pinned(num_threads) as cpus:
        model, ref = _ready(content, num_threads), _ready(reference, num_threads)
        for _ in range(warmup):  # XNNPACK packs weights on the first invokes; caches warm up
            model.invoke()
            ref.invoke()
        a_ms, b_ms, ratios, seconds = _timed_pairs(model, ref, min_pairs=min_runs, min_seconds=min_seconds,
                                                   max_seconds=max_seconds)
    p10, median, p90 = np.percentile(a_ms, [10, 50, 90])
    ratio, ratio_p90 = np.percentile(ratios, [50, 90])
    return InterleavedStats(
        ratio=float(ratio), ratio_p90=float(ratio_p90), median_ms=float(median), p90_ms=float(p90),
        reference_median_ms=float(np.median(b_ms)), spread=float((p90 - p10) / median) if median > 0 else 0.0,
        pairs=len(ratios), seconds=seconds, num_threads=num_threads, cpus=cpus,
    )
