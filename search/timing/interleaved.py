"""Latency relative to a reference: invokes of the model and of the reference, alternated.

The host's speed wanders by 10-16% between 3 s windows, even idle. Timing A, B, A, B ... on the
same pinned cores and threads, each pair sees the same moment of the machine, so the pair's ratio
A / B cancels the drift: on this VM the median of the per-pair ratios of two int8 models spread
1.3% over ten 3 s windows where each model's own median spread 14-16% (timing 0.25 s blocks of
each model instead of single invokes: 7.8%, as the drift moves within a quarter second). The drift
cancels only between alike models, so the reference is the same network at the model's resolution
(``search.timing.rungs``). Each model's turn runs ~3 ms untimed, then ~3 ms timed (``TURN_MS``),
so both are timed at the speed they keep back to back, as the reference's own latency is
(``search.timing.absolute``) and as TFLite's benchmark tool reports. The window is split over
``SESSIONS`` fresh pairs of interpreters, whose ratios are pooled: one pair's ratio can sit a few
percent off however long it is timed. The reported latency is the ratio times the reference's
latency on the node.
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
    ratio: float  # median over pairs of (model's turn / the reference's turn right after it)
    ratio_p90: float  # 90th percentile of the same ratios
    median_ms: float  # the model's own turns (each its timed invokes' median), raw: what the drift moves
    p90_ms: float
    reference_median_ms: float  # the reference's turns in the same window, raw
    spread: float  # (p90 - p10) / median of the model's own turns: high when something disturbed it
    pairs: int  # pairs of turns
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
#   No side may be favoured: the turn is bounded by the clock (not by a count of invokes fixed from
# each model's noisy warm-up), every other pair starts with the reference, and every other session
# makes the reference's interpreter first. With counts and one fixed order the 96 px int8 rung timed
# against itself read 1.002-1.026 over six 4 s measurements, and 0.998-1.002 with all three
# (2026-12-08, AVX-512 host).
TURN_MS = 3.0
# The window is split over this many fresh pairs of interpreters, their ratios pooled. One pair keeps
# its ratio (0.3% over eight 3 s windows), but a new pair's can sit elsewhere: the same 96 px int8
# model against its rung read 0.998-1.024 from one 6 s measurement to the next, likely where the
# interpreters' buffers land. Pooling 3 pairs: 8 measurements spread 0.9% (int8@96) and 1.7%
# (float32@96) where one pair spread 2.6% and 4.6% in the same loop (2026-12-08, AVX-512 host).
SESSIONS = 3
# Bump when the way a pair is timed changes: a rung's link kept on a node (search.timing.rungs) was
# timed this way, and a link timed another way must not be read back.
TIMING_VERSION = 3  # 3: sessions, turns bounded by the clock, both orders


def _turn(interpreter, clock) -> float:
    """One model's turn: invokes for ``TURN_MS`` untimed, then for ``TURN_MS`` timed (at least one
    each); the median seconds of the timed ones."""
    turn = TURN_MS / 1e3
    end = clock() + turn
    while True:
        interpreter.invoke()
        if clock() >= end:
            break
    times = []
    end = clock() + turn
    while True:
        t0 = clock()
        interpreter.invoke()
        t1 = clock()
        times.append(t1 - t0)
        if t1 >= end:
            break
    return float(np.median(times))


def _timed_pairs(model, reference, *, min_pairs: int, min_seconds: float, max_seconds: float):
    """Alternate the two models' turns until ``min_pairs`` over ``min_seconds`` with a stable median
    ratio, or ``max_seconds``; returns the model's and the reference's ms per pair, the ratios and the
    phase's length. A pair spans a few milliseconds, so the host's drift cancels in its ratio."""
    a_ms: list[float] = []
    b_ms: list[float] = []
    ratios: list[float] = []
    clock = time.perf_counter
    begin = clock()
    while True:
        if len(ratios) % 2 == 0:
            a = _turn(model, clock)
            b = _turn(reference, clock)
        else:  # every other pair the reference first: each order counts alike
            b = _turn(reference, clock)
            a = _turn(model, clock)
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
                        min_runs: int = 20, min_seconds: float = 3.0, max_seconds: float = 10.0,
                        sessions: int = SESSIONS) -> InterleavedStats:
    """Time ``content`` against ``reference``, turn by turn, on ``num_threads`` threads pinned to
    as many cores (the interpreters made while pinned, so their threads stay there too), in
    ``sessions`` fresh pairs of interpreters sharing the runs and seconds."""
    check_timing(warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds)
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, but got {sessions}")
    a_ms: list[float] = []
    b_ms: list[float] = []
    ratios: list[float] = []
    seconds = 0.0
    with pinned(num_threads) as cpus:
        for session in range(sessions):
            if session % 2 == 0:  # and every other session the reference's interpreter is made first
                model, ref = _ready(content, num_threads), _ready(reference, num_threads)
            else:
                ref, model = _ready(reference, num_threads), _ready(content, num_threads)
            for _ in range(max(1, warmup)):  # XNNPACK packs weights on the first invoke
                model.invoke()
                ref.invoke()
            a, b, r, s = _timed_pairs(model, ref, min_pairs=math.ceil(min_runs / sessions),
                                      min_seconds=min_seconds / sessions, max_seconds=max_seconds / sessions)
            a_ms += a
            b_ms += b
            ratios += r
            seconds += s
            del model, ref  # before the next pair is made: one pair's buffers at a time
    p10, median, p90 = np.percentile(a_ms, [10, 50, 90])
    ratio, ratio_p90 = np.percentile(ratios, [50, 90])
    return InterleavedStats(
        ratio=float(ratio), ratio_p90=float(ratio_p90), median_ms=float(median), p90_ms=float(p90),
        reference_median_ms=float(np.median(b_ms)), spread=float((p90 - p10) / median) if median > 0 else 0.0,
        pairs=len(ratios), seconds=round(seconds, 3), num_threads=num_threads, cpus=cpus,
    )
