"""Absolute latency of one invoke of a ``.tflite`` model in the LiteRT interpreter, on this CPU.

What the latency reference's own latency on a node is measured with (once, long:
``search.timing.reference``), and what the benchmarks time. A trial's ``latency_ms`` is not this
number but a ratio to the reference (``search.timing.interleaved``), which the host's drift does
not move. Needs numpy and LiteRT only (a device node has nothing else).

The number is only meaningful with how it was taken, so ``LatencyStats`` carries the thread count
and the CPU model, and the spread tells a clean measurement from one disturbed by other work on
the machine. The caller makes sure nothing else of ours runs on the node meanwhile (a node-local
lock); this module only times.

Two things make repeated measurements of one model agree (``benchmarks/latency_stability.py``):

- The timed phase lasts at least ``min_seconds``. On this 2-core VM, even idle, the median of
  20 invokes of the stock network (int8, 416 px) (0.4 s) ranged over 16% from one window to the next;
  over ~4.5 s windows, 4%. Slow stretches come in bursts of a fraction of a second (the host,
  not us), so only time averages them out; more runs in a short window do not.
- The timing thread (and the interpreter's threads, made while it is pinned) stay on
  ``num_threads`` fixed cores, the last ones the process may use, away from core 0 where most
  interrupts land; no migration between cores mid-measurement. Restored afterwards.
- The reported median and p90 are over the quieter half of the timed phase: it is cut into
  blocks of ``BLOCK_SECONDS``, and the invokes of the half of the blocks with the lowest block
  medians are kept. Other work on the machine only ever adds time, and it comes in stretches (a
  Ray worker starting, the host's other guests); what a trial should report is the model's
  latency on a quiet node. ``spread`` and ``median_all_ms`` are over every timed invoke, so a
  disturbed measurement still shows.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.provenance import cpu_model

__all__ = ["LatencyStats", "check_timing", "cpu_model", "fixed_input", "measure_latency", "median_is_stable", "pinned",
           "quiet_half"]

# Stop once the median of all runs and the median without the last few agree this closely: more
# runs would not move the reported number.
STABLE_MEDIAN_TOLERANCE = 0.02
STABLE_MEDIAN_WINDOW = 5  # the "last few" runs above
INPUT_SEED = 0  # the same input every time: latency must not depend on which random image came up
BLOCK_SECONDS = 0.5  # the timed phase is judged in blocks this long; the quieter half is reported
MIN_BLOCKS = 4  # with fewer blocks (a short or slow measurement), every invoke is reported


@dataclass(frozen=True)
class LatencyStats:
    """Timings of single invokes, in milliseconds, and the conditions they were taken in."""

    median_ms: float  # over the quieter half of the timed blocks (module docstring)
    p90_ms: float
    min_ms: float
    max_ms: float
    spread: float  # (p90 - p10) / median of every invoke: ~0.05 on a quiet machine, much more when others compute
    median_all_ms: float  # the median of every timed invoke
    runs: int  # timed invokes, warm-up excluded
    reported_runs: int  # of which in the quieter blocks, behind median_ms and p90_ms
    seconds: float  # length of the timed phase
    num_threads: int
    cpu_model: str
    cpus: str  # the cores the timing ran on ("1"), or "any" where the OS cannot pin


def fixed_input(detail: dict) -> np.ndarray:
    rng = np.random.default_rng(INPUT_SEED)
    shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@contextmanager
def pinned(num_threads: int):
    """Run the calling thread on the last ``num_threads`` cores it may use; yields them as "1" / "0,1"."""
    if not hasattr(os, "sched_setaffinity"):
        yield "any"
        return
    allowed = sorted(os.sched_getaffinity(0))  # pid 0: the calling thread
    cores = set(allowed[-num_threads:])
    os.sched_setaffinity(0, cores)
    try:
        yield ",".join(str(core) for core in sorted(cores))
    finally:
        os.sched_setaffinity(0, allowed)


def quiet_half(times: list[float], starts: list[float], *, block_seconds: float = BLOCK_SECONDS) -> list[float]:
    """The invokes of the half of the ``block_seconds`` blocks with the lowest medians (all of
    them when there are fewer than ``MIN_BLOCKS`` blocks). ``starts``: each invoke's start, in
    seconds from the first."""
    blocks: dict[int, list[float]] = {}
    for ms, start in zip(times, starts):
        blocks.setdefault(int(start // block_seconds), []).append(ms)
    if len(blocks) < MIN_BLOCKS:
        return list(times)
    ranked = sorted(blocks.values(), key=lambda block: float(np.median(block)))
    return [ms for block in ranked[: (len(ranked) + 1) // 2] for ms in block]


def median_is_stable(values: list[float]) -> bool:
    """Whether the median of ``values`` and the median without the last few agree (more would not move it)."""
    if len(values) <= STABLE_MEDIAN_WINDOW:
        return False
    now, before = np.median(values), np.median(values[:-STABLE_MEDIAN_WINDOW])
    return abs(now - before) <= STABLE_MEDIAN_TOLERANCE * now


def check_timing(*, warmup: int, min_runs: int, min_seconds: float, max_seconds: float) -> None:
    """The settings of a timed phase (here and ``search.timing.interleaved``), or ValueError."""
    if warmup < 0 or min_runs < 1 or min_seconds < 0 or max_seconds <= 0 or min_seconds > max_seconds:
        raise ValueError(
            f"need warmup >= 0, min_runs >= 1 and 0 <= min_seconds <= max_seconds with max_seconds > 0, "
            f"but got {warmup}, {min_runs}, {min_seconds}, {max_seconds}."
        )


def _timed_invokes(interpreter, *, min_runs: int, min_seconds: float, max_seconds: float):
    """Invoke until ``min_runs`` over ``min_seconds`` with a stable median, or ``max_seconds``;
    returns each invoke's ms, each one's start (s from the first), and the phase's length."""
    times: list[float] = []
    starts: list[float] = []
    begin = time.perf_counter()
    deadline = begin + max_seconds
    long_enough = begin + min_seconds
    while True:
        start = time.perf_counter()
        interpreter.invoke()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        starts.append(start - begin)
        if end >= deadline:
            break
        if end >= long_enough and len(times) >= min_runs and median_is_stable(times):
            break
    return times, starts, round(end - begin, 3)


def measure_latency(
    content: bytes | Path,
    *,
    num_threads: int = 1,
    warmup: int = 5,  # first invokes pay for XNNPACK's weight packing and cold caches
    min_runs: int = 20,
    min_seconds: float = 3.0,  # see the module docstring: shorter windows do not repeat within 5%
    max_seconds: float = 10.0,  # bounds the timed phase, so a slow model cannot hold the node lock for long
) -> LatencyStats:
    """Time single invokes of the model ``content`` on ``num_threads`` threads, pinned to as many cores.

    ``warmup`` untimed invokes, then timed ones until at least ``min_runs`` are done over at least
    ``min_seconds`` and the median is stable, or ``max_seconds`` have passed (at least one run is
    always timed).
    """
    check_timing(warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds)
    from search.tflite_model import load_interpreter  # here: reading the objectives table stays cheap

    with pinned(num_threads) as cpus:
        interpreter = load_interpreter(content, num_threads=num_threads)  # its threads inherit the pinning
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], fixed_input(detail))
        for _ in range(warmup):
            interpreter.invoke()

        times, starts, seconds = _timed_invokes(interpreter, min_runs=min_runs, min_seconds=min_seconds,
                                                max_seconds=max_seconds)

    p10, median_all, p90_all = np.percentile(times, [10, 50, 90])
    reported = quiet_half(times, starts)
    median, p90 = np.percentile(reported, [50, 90])
    return LatencyStats(
        median_ms=float(median),
        p90_ms=float(p90),
        min_ms=float(min(times)),
        max_ms=float(max(times)),
        spread=float((p90_all - p10) / median_all) if median_all > 0 else 0.0,
        median_all_ms=float(median_all),
        runs=len(times),
        reported_runs=len(reported),
        seconds=seconds,
        num_threads=num_threads,
        cpu_model=cpu_model(),
        cpus=cpus,
    )


