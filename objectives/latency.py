"""Latency of one invoke of a ``.tflite`` model in the LiteRT interpreter, on this CPU.

The number is only meaningful with how it was taken, so ``LatencyStats`` carries the thread count
and the CPU model, and the spread tells a clean measurement from one disturbed by other work on
the machine. The caller makes sure nothing else of ours runs on the node meanwhile (a node-local
lock); this module only times.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from search.tflite_model import load_interpreter

__all__ = ["LatencyStats", "measure_latency", "cpu_model"]

# Stop once the median of all runs and the median without the last few agree this closely: more
# runs would not move the reported number.
STABLE_MEDIAN_TOLERANCE = 0.02
STABLE_MEDIAN_WINDOW = 5  # the "last few" runs above
INPUT_SEED = 0  # the same input every time: latency must not depend on which random image came up


@dataclass(frozen=True)
class LatencyStats:
    """Timings of single invokes, in milliseconds, and the conditions they were taken in."""

    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    spread: float  # (p90 - p10) / median: ~0.05 on a quiet machine, much more when others compute
    runs: int  # timed invokes, warm-up excluded
    num_threads: int
    cpu_model: str


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _fixed_input(detail: dict) -> np.ndarray:
    rng = np.random.default_rng(INPUT_SEED)
    shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _median_is_stable(times: list[float]) -> bool:
    if len(times) <= STABLE_MEDIAN_WINDOW:
        return False
    now, before = np.median(times), np.median(times[:-STABLE_MEDIAN_WINDOW])
    return abs(now - before) <= STABLE_MEDIAN_TOLERANCE * now


def measure_latency(
    content: bytes | Path,
    *,
    num_threads: int = 1,
    warmup: int = 5,  # first invokes pay for XNNPACK's weight packing and cold caches
    min_runs: int = 20,
    max_seconds: float = 10.0,  # bounds the timed phase, so a slow model cannot hold the node lock for long
) -> LatencyStats:
    """Time single invokes of the model ``content`` on ``num_threads`` threads.

    ``warmup`` untimed invokes, then timed ones until at least ``min_runs`` are done and the
    median is stable, or ``max_seconds`` have passed (at least one run is always timed).
    """
    if warmup < 0 or min_runs < 1 or max_seconds <= 0:
        raise ValueError(
            f"need warmup >= 0, min_runs >= 1 and max_seconds > 0, but got {warmup}, {min_runs}, {max_seconds}."
        )
    interpreter = load_interpreter(content, num_threads=num_threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _fixed_input(detail))
    for _ in range(warmup):
        interpreter.invoke()

    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while True:
        start = time.perf_counter()
        interpreter.invoke()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        if end >= deadline or (len(times) >= min_runs and _median_is_stable(times)):
            break

    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return LatencyStats(
        median_ms=float(median),
        p90_ms=float(p90),
        min_ms=float(min(times)),
        max_ms=float(max(times)),
        spread=float((p90 - p10) / median) if median > 0 else 0.0,
        runs=len(times),
        num_threads=num_threads,
        cpu_model=cpu_model(),
    )
