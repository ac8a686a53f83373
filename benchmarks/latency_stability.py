"""Does the same model get the same latency every time, even while a search runs beside it?

    .venv/bin/python benchmarks/latency_stability.py [--repeats 8] [--with-search] [--model FILE.tflite]

Builds YOLOv4-tiny (random weights: latency does not depend on their values) at ``--resolution``,
converts it in ``--mode``, or takes ``--model``; then measures its latency ``--repeats`` times, each
a full ``measure_latency`` call holding ``search.node_lock.exclusive()`` exactly as a trial does.
With ``--with-search`` a smoke search (``spaces/smoke.yaml``, 12 trials, its own run and cache
folders) runs as a subprocess meanwhile, so the lock is really contended: each measurement waits
for the search's running stages and holds its next ones back.

Prints each measurement's median and p90 as a trial reports them (over the quieter half of its
0.5 s blocks, ``search/objectives/latency.py``), its spread and the median of every invoke, how
long it waited for the lock, and the largest relative difference between the reported medians
((max - min) / median of medians); exits 1 when that is over ``--tolerance`` (5%). The same
difference for the every-invoke medians is printed for comparison. The lock keeps *our* trials
off the node, nothing else: other users' processes on a shared machine still show up here, which
is what the spread column is for.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a clone

from search.objectives.latency import measure_latency  # noqa: E402
from search.node_lock import exclusive, shared  # noqa: E402

SEARCH_TRIALS = 12  # enough to keep it running through every measurement
QUIET_SPREAD = 0.15  # a measurement whose (p90 - p10) / median is above this was visibly disturbed
SEARCH_STOP_SECONDS = 60  # after SIGINT, how long Ray Tune may take to wind down before SIGKILL


def build_model(*, resolution: int, mode: str) -> bytes:
    """YOLOv4-tiny (80 classes, random init) at ``resolution`` converted in ``mode``."""
    import numpy as np

    from search.compat import keras
    from search.models import get_family
    from search.quantize import QUANT_MODES, convert

    keras.utils.set_random_seed(0)
    model = get_family("yolov4_tiny").build(num_classes=80, resolution=resolution)
    calibration = None
    if QUANT_MODES[mode].needs_calibration:
        calibration = np.random.default_rng(0).random((4, resolution, resolution, 3), dtype=np.float32)
    with shared():  # as a trial's conversion: no one's latency measurement runs meanwhile
        return convert(model, mode=mode, calibration_images=calibration).content


def start_search(workdir: Path) -> tuple[subprocess.Popen, Path]:
    """The smoke search as a subprocess in its own process group; (process, its log file)."""
    log = workdir / "search.log"
    command = [
        sys.executable, "-m", "search", "run", "spaces/smoke.yaml",
        "--run-dir", str(workdir / "run"),
        "--set", f"storage.cache_dir={workdir / 'cache'}",
        "--set", f"budget.trials={SEARCH_TRIALS}",
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process, log


def wait_until_trials_run(process: subprocess.Popen, run_dir: Path, *, timeout: float) -> None:
    """Return once the search has started its first trial (or ended, or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if any((run_dir / "trials").glob("*")):
            return
        time.sleep(1.0)


def stop_search(process: subprocess.Popen) -> int:
    """Interrupt the search (Ray Tune then stops its local Ray), kill its group if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(SEARCH_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything the driver left behind in its group
    except ProcessLookupError:
        pass
    return process.returncode


def relative_difference(medians: list[float]) -> float:
    """(max - min) / median of ``medians``: how far apart the measurements of one model are."""
    return (max(medians) - min(medians)) / statistics.median(medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .tflite file to time (default: build one)")
    parser.add_argument("--resolution", type=int, default=416, help="when building (default 416)")
    parser.add_argument("--mode", default="int8", help="quantization mode when building (default int8)")
    parser.add_argument("--repeats", type=int, default=8, help="full measurements to compare (default 8)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between measurements (default 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--min-runs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each measurement at least this long (default 3, as the spaces)")
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed (max - min) / median of medians")
    parser.add_argument("--with-search", action="store_true", help=f"run a {SEARCH_TRIALS}-trial smoke search meanwhile")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error(f"--repeats must be >= 2 to compare measurements, but got {args.repeats}")

    content = args.model.read_bytes() if args.model else build_model(resolution=args.resolution, mode=args.mode)
    what = str(args.model) if args.model else f"YOLOv4-tiny {args.resolution}px {args.mode} (random weights)"
    print(f"model: {what}, {len(content):,} bytes; threads={args.threads}", flush=True)

    search = None
    if args.with_search:
        workdir = Path(tempfile.mkdtemp(prefix="latency-stability-"))
        search, log = start_search(workdir)
        print(f"search: pid {search.pid}, log {log}; waiting for its first trial ...", flush=True)
        wait_until_trials_run(search, workdir / "run", timeout=600)

    medians, medians_all, spreads = [], [], []
    try:
        print("#  search   lock_wait_s  median_ms  p90_ms  spread  runs  median_all_ms")
        for i in range(args.repeats):
            if i:
                time.sleep(args.interval)
            running = "running" if search is not None and search.poll() is None else "-"
            asked = time.perf_counter()
            with exclusive():
                waited = time.perf_counter() - asked
                stats = measure_latency(
                    content, num_threads=args.threads, warmup=args.warmup, min_runs=args.min_runs,
                    min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                )
            medians.append(stats.median_ms)
            medians_all.append(stats.median_all_ms)
            spreads.append(stats.spread)
            print(f"{i:<2} {running:8} {waited:11.2f}  {stats.median_ms:9.2f}  {stats.p90_ms:6.2f}  "
                  f"{stats.spread:6.3f}  {stats.runs:4}  {stats.median_all_ms:13.2f}", flush=True)
    finally:
        if search is not None:
            finished = search.poll() is not None
            code = stop_search(search)
            print(f"search: {'finished' if finished else 'stopped'} with exit code {code}")

    difference = relative_difference(medians)
    print(f"all {len(medians)} medians: min {min(medians):.2f} ms, median {statistics.median(medians):.2f} ms, "
          f"max {max(medians):.2f} ms; max relative difference {difference:.1%} (tolerance {args.tolerance:.0%}); "
          f"cpu {stats.cpu_model}")
    print(f"for comparison, the medians of every invoke (not what a trial reports): {min(medians_all):.2f} .. "
          f"{max(medians_all):.2f} ms, max relative difference {relative_difference(medians_all):.1%}")
    # Which part of the difference came from disturbed measurements: for the reader, not the verdict.
    quiet = [m for m, s in zip(medians, spreads) if s <= QUIET_SPREAD]
    if len(quiet) >= 2:
        print(f"{len(quiet)} quiet medians (spread <= {QUIET_SPREAD}): {min(quiet):.2f} .. {max(quiet):.2f} ms, "
              f"max relative difference {relative_difference(quiet):.1%}")
    else:
        print(f"fewer than 2 quiet measurements (spread <= {QUIET_SPREAD}): the machine was busy throughout")
    return 0 if difference <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
