"""Latency relative to a reference: invokes of the model and of the reference, alternated.

The host's speed wanders by 10-16% between 3 s windows, even idle. Timing A, B, A, B ... on the
same pinned cores and threads, each pair sees the same moment of the machine, so the pair's ratio
A / B cancels the drift: on this VM the median of the per-pair ratios of two int8 models spread
1.3% over ten 3 s windows where each model's own median spread 14-16% (timing 0.25 s blocks of
each model instead of single invokes: 7.8%, as the drift moves within a quarter second). The drift
cancels only between alike models, so the reference is the same network at the model's resolution
(``search.timing.rungs``). Each model's turn runs ~3 ms untimed, then ~3 ms timed (``TURN_MS``),
so both are timed at the speed they keep back to back, as the reference's own latency is
(``search.timing.absolute``) and as TFLite's benchmark tool reports. The reported
latency is the ratio times the reference's latency on the node.
"""

from __future__ import annotations

import math
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


# Each model runs this long untimed, then this long timed, before the other model's turn. Right after
# the 256 px reference, a 64 px int8 model took 0.60, 0.44, 0.37, 0.33, 0.32, 0.31 ms on its 1st to 6th
# invokes (0.30 alone), a 96 px one 0.85 ... 0.63 (0.62): about 3 ms of its own running brings it
# within 2-3% of its speed alone (2026-12-07, AVX-512 host). Timing as long again (the median of
# those invokes) halves the untimed share, and one pair still spans milliseconds, not the 0.25 s
# over which the host's drift moves.
TURN_MS = 3.0
# Bump when the way a pair is timed changes: a rung's link kept on a node (search.timing.rungs) was
# timed this way, and a link timed another way must not be read back.
TIMING_VERSION = 2


@dataclass(frozen=True)
class Turn:
    """How a model's turn in a pair runs: untimed invokes, then timed ones (their median is its time)."""

    untimed: int
    timed: int


def _turn(interpreter, warmup: int) -> Turn:
    """The model's turn, ``TURN_MS`` each, by the median of ``warmup`` invokes (at least one, which also
    leaves XNNPACK's packed weights in place)."""
    times = []
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t0)
    count = max(1, math.ceil(TURN_MS / 1e3 / max(float(np.median(times)), 1e-6)))
    return Turn(untimed=count, timed=count)


def _timed(interpreter, turn: Turn, clock) -> float:
    """The median seconds of the turn's timed invokes, after its untimed ones."""
    for _ in range(turn.untimed):
        interpreter.invoke()
    times = []
    for _ in range(turn.timed):
        t0 = clock()
        interpreter.invoke()
        times.append(clock() - t0)
    return float(np.median(times))


def _timed_pairs(model, reference, *, turns: tuple[Turn, Turn], min_pairs: int, min_seconds: float,
                 max_seconds: float):
    """Alternate the two models' turns until ``min_pairs`` over ``min_seconds`` with a stable median
    ratio, or ``max_seconds``; returns the model's and the reference's ms per pair and the phase's
    length. A pair spans a few milliseconds, so the host's drift cancels in its ratio."""
    a_ms: list[float] = []
    b_ms: list[float] = []
    ratios: list[float] = []
    clock = time.perf_counter
    begin = clock()
    while True:
        a = _timed(model, turns[0], clock)
        b = _timed(reference, turns[1], clock)
        a_ms.append(a * 1e3)
        b_ms.append(b * 1e3)
        ratios.append(a / b)
        elapsed = clock() - begin
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
        # XNNPACK packs weights on the first invokes; their times then set each model's turn
        turns = (_turn(model, warmup), _turn(ref, warmup))
        a_ms, b_ms, ratios, seconds = _timed_pairs(model, ref, turns=turns, min_pairs=min_runs,
                                                   min_seconds=min_seconds, max_seconds=max_seconds)
    p10, median, p90 = np.percentile(a_ms, [10, 50, 90])
    ratio, ratio_p90 = np.percentile(ratios, [50, 90])
    return InterleavedStats(
        ratio=float(ratio), ratio_p90=float(ratio_p90), median_ms=float(median), p90_ms=float(p90),
        reference_median_ms=float(np.median(b_ms)), spread=float((p90 - p10) / median) if median > 0 else 0.0,
        pairs=len(ratios), seconds=seconds, num_threads=num_threads, cpus=cpus,
    )
