"""The prune + fine-tune stage, cached by content in storage every node can reach.

The stage's result depends only on the base weights, the data, the preprocessing, the resolution,
the pruning spec, the fine-tune settings and the seed; quantization mode and calibration size act
later. ``stage_key`` hashes exactly those, so every trial that differs only in how it is
converted finds the fine-tuned weights under ``<stages>/<key>/`` and skips the most expensive
step, on any node that mounts the same storage.

Computed once, even when two trials need it at the same time: the first to create
``<key>.lock`` (``O_CREAT | O_EXCL``, atomic on local disks and on NFS v3+) computes; the others
poll until ``stage.json`` appears. The holder touches the lock every ``HEARTBEAT_S``; a lock
whose mtime is older than ``stale_after_s`` belonged to a process or node that died, and is
broken, so a killed node never blocks the search. Results are written to temp names and renamed:
``stage.json`` is renamed last, so its presence means the weights are complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search.atomic import write_text_atomic

# Bump when prune/fine-tune code changes what a cached stage would contain.
STAGE_VERSION = 1
HEARTBEAT_S = 5.0  # how often the holder proves it is alive
STALE_AFTER_S = 30.0  # a lock untouched this long is a dead holder's (6 missed heartbeats)
POLL_S = 0.5  # how often a waiter looks for the result
WEIGHTS = "weights.h5"
CARD = "stage.json"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(
    *, base_weights_sha256: str, dataset_fingerprint: str, preprocessing: str, resolution: int,
    pruning: dict, fine_tune: dict, seed: int,
) -> str:
    """The content address of a prune + fine-tune result: a hash of everything it depends on."""
    material = {
        "version": STAGE_VERSION, "base": base_weights_sha256, "data": dataset_fingerprint,
        "preprocessing": preprocessing, "resolution": resolution, "pruning": pruning,
        "fine_tune": fine_tune, "seed": seed,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CachedStage:
    weights: Path  # stripped fine-tuned Keras weights, loadable into a model built at the resolution
    sparsity: float  # measured on the stripped model when it was computed
    hit: bool  # False only for the one process that computed it
    wait_s: float  # time spent waiting for another process's computation (0 when none)


class _Heartbeat:
    """Touches the lock file while the stage is computed, so waiters know the holder lives."""

    def __init__(self, path: Path, period_s: float):
        self.path, self.period_s = path, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # broken by someone who thought we were dead: nothing to keep
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _try_lock(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
    return True


def _break_if_stale(lock: Path, stale_after_s: float) -> None:
    """Remove a lock nobody has touched for ``stale_after_s``; only one breaker's rename wins."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age < stale_after_s:
        return
    broken = lock.with_name(f"{lock.name}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.rename(lock, broken)
    except FileNotFoundError:
        return  # another waiter broke it first
    broken.unlink(missing_ok=True)


def _read(folder: Path) -> dict | None:
    try:
        return json.loads((folder / CARD).read_text())
    except FileNotFoundError:
        return None


def cached_stage(
    root: str | Path, key: str, compute: Callable[[Path], float], *,
    stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S, poll_s: float = POLL_S,
) -> CachedStage:
    """The stage under ``root/key``, computed by ``compute(weights_path) -> sparsity`` if absent.

    ``compute`` saves the stripped weights to the path it is given and returns the measured
    sparsity. Exactly one caller across processes and nodes sharing ``root`` runs it; the others
    wait for its result. If ``compute`` raises, the lock is released and the error propagates
    (the next caller tries again).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder, lock = root / key, root / f"{key}.lock"
    started = time.perf_counter()
    while True:
        card = _read(folder)
        if card is not None:
            return CachedStage(folder / WEIGHTS, card["sparsity"], True, round(time.perf_counter() - started, 3))
        if _try_lock(lock):
            break
        _break_if_stale(lock, stale_after_s)
        time.sleep(poll_s)
    try:
        card = _read(folder)  # finished between our last look and taking the lock
        if card is not None:
            return CachedStage(folder / WEIGHTS, card["sparsity"], True, round(time.perf_counter() - started, 3))
        waited = time.perf_counter() - started
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{WEIGHTS}.{socket.gethostname()}.{os.getpid()}.tmp.h5"
        with _Heartbeat(lock, heartbeat_s):
            sparsity = float(compute(tmp))
        os.replace(tmp, folder / WEIGHTS)
        write_text_atomic(folder / CARD, json.dumps({
            "key": key, "sparsity": sparsity, "computed_on": socket.gethostname(), "computed_at": time.time(),
        }, indent=2))
        return CachedStage(folder / WEIGHTS, sparsity, False, round(waited, 3))
    finally:
        lock.unlink(missing_ok=True)
