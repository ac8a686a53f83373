"""The prune + fine-tune stage, cached by content in storage every node can reach.

The stage's result depends only on the base weights, the data, the preprocessing, the resolution,
the pruning spec, the fine-tune settings and the seed; quantization mode and calibration size act
later. ``search.stages.fine_tune.stage_key`` hashes exactly those, so every trial that differs only in how it is
converted finds the fine-tuned weights under ``<stages>/<key>/`` and skips the most expensive
step, on any node that reaches the same storage: a mounted folder or an object store
(``search.storage``).

Computed once, even when two trials need it at the same time. Who computes is decided by a lock
whose holder proves it lives by touching it every ``HEARTBEAT_S``; a lock untouched for
``stale_after_s`` belonged to a process or node that died and is broken, so a killed node never
blocks the search. Waiters poll until ``stage.json`` appears; it is written last, so its presence
means the weights are complete.

- In a folder (``FolderStages``) the lock is ``<key>.lock``, created with ``O_CREAT | O_EXCL``
  (atomic on local disks and on NFS v3+); results are written to temp names and renamed.
- In an object store (``ObjectStoreStages``), which has no exclusive create, each contender
  writes its own entry under ``<key>.lock/`` and then lists them: it holds the lock only if its
  entry is the only live one, else it deletes its entry and waits. With the read-after-write
  consistency that S3 and GCS give, two contenders cannot both see themselves alone (the later
  writer's listing sees the earlier entry), so at most one computes; when both see each other,
  both back off for a random moment and try again. Staleness is judged by the store's
  modification times against the node's clock: nodes' clocks must agree within seconds (NTP).
  Every object is written by one PUT, visible whole or not at all.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search import storage
from search.files import write_text_atomic

# Bump when prune/fine-tune code changes what a cached stage would contain. (2: the card holds
# the network's architecture beside the weights; 3: filter pruning ranks by output spread and folds
# a removed filter's mean into its readers; 4: it removes the filters the kept ones stand in for best,
# their least-squares fits folded into the readers.)
STAGE_VERSION = 4
HEARTBEAT_S = 5.0  # how often the holder proves it is alive
STALE_AFTER_S = 30.0  # a lock untouched this long is a dead holder's (6 missed heartbeats)
POLL_S = 0.5  # how often a waiter looks for the result
WEIGHTS = "weights.h5"
CARD = "stage.json"
STAGE_COPIES = storage.SCRATCH / "stages"  # node-local copies of stages kept in an object store


@dataclass(frozen=True)
class CachedStage:
    weights: Path  # stripped fine-tuned Keras weights on this node, loadable into ``architecture`` at the resolution
    sparsity: float  # measured on the stripped model when it was computed
    architecture: dict  # the network the weights belong to (``ModelFamily.from_architecture``)
    hit: bool  # False only for the one process that computed it
    wait_s: float  # time spent waiting for another process's computation (0 when none)

    @classmethod
    def from_card(cls, card: dict, weights: Path, *, hit: bool, wait_s: float) -> CachedStage:
        return cls(weights, card["sparsity"], card["architecture"], hit, wait_s)


def _holder() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})


class FolderStages:
    """Stages in a folder on a local disk or a shared mount (NFS, EFS)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _lock(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    def card(self, key: str) -> dict | None:
        try:
            return json.loads((self.root / key / CARD).read_text())
        except FileNotFoundError:
            return None

    def weights(self, key: str) -> Path:
        return self.root / key / WEIGHTS

    def try_lock(self, key: str) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._lock(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(_holder())
        return True

    def touch(self, key: str) -> bool:
        """Refresh the lock; False when it is gone (broken by someone who thought we were dead)."""
        try:
            os.utime(self._lock(key))
        except FileNotFoundError:
            return False
        return True

    def break_if_stale(self, key: str, stale_after_s: float) -> None:
        """Remove a lock nobody has touched for ``stale_after_s``; only one breaker's rename wins."""
        lock = self._lock(key)
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

    def unlock(self, key: str) -> None:
        self._lock(key).unlink(missing_ok=True)

    def scratch(self, key: str) -> Path:
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f".{WEIGHTS}.{socket.gethostname()}.{os.getpid()}.tmp.h5"

    def publish(self, key: str, weights: Path, card: dict) -> None:
        os.replace(weights, self.weights(key))
        write_text_atomic(self.root / key / CARD, json.dumps(card, indent=2))


class ObjectStoreStages:
    """Stages in an object store (``s3://``, ``gs://``...): see the module docstring for the lock."""

    def __init__(self, root: str, *, stale_after_s: float = STALE_AFTER_S):
        self.root, self.stale_after_s = root, stale_after_s
        self.me = f"{time.time_ns()}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _locks(self, key: str) -> str:
        return storage.join(self.root, f"{key}.lock")

    def card(self, key: str) -> dict | None:
        data = storage.read_bytes(storage.join(self.root, key, CARD))
        return json.loads(data) if data is not None else None

    def weights(self, key: str) -> Path:
        return storage.local_copy(storage.join(self.root, key, WEIGHTS), cache=STAGE_COPIES)

    def _live(self, key: str) -> list[str]:
        now = time.time()
        return [e.name for e in storage.entries(self._locks(key))
                if e.name == self.me or now - e.mtime < self.stale_after_s]

    def try_lock(self, key: str) -> bool:
        mine = storage.join(self._locks(key), self.me)
        storage.write_bytes(mine, _holder().encode())
        if self._live(key) == [self.me]:
            return True
        storage.delete(mine)  # someone else holds it, or is contending: back off
        return False

    def touch(self, key: str) -> bool:
        storage.write_bytes(storage.join(self._locks(key), self.me), _holder().encode())
        return True

    def break_if_stale(self, key: str, stale_after_s: float) -> None:
        now = time.time()
        for entry in storage.entries(self._locks(key)):
            if entry.name != self.me and now - entry.mtime >= stale_after_s:
                storage.delete(storage.join(self._locks(key), entry.name))

    def unlock(self, key: str) -> None:
        storage.delete(storage.join(self._locks(key), self.me))

    def scratch(self, key: str) -> Path:
        folder = storage.SCRATCH / "compute"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}.{os.getpid()}.h5"

    def publish(self, key: str, weights: Path, card: dict) -> None:
        storage.upload(weights, storage.join(self.root, key, WEIGHTS))
        storage.write_bytes(storage.join(self.root, key, CARD), json.dumps(card, indent=2).encode())
        # This node has the file already: it becomes the local copy, not downloaded again.
        local = storage.cache_path(storage.join(self.root, key, WEIGHTS), cache=STAGE_COPIES)
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(weights, local)


def stages_at(root: str | Path, *, stale_after_s: float = STALE_AFTER_S):
    """The stage store at ``root``: a folder, or an object store for a URI."""
    return ObjectStoreStages(str(root), stale_after_s=stale_after_s) if storage.is_uri(root) else FolderStages(root)


def cached(root: str | Path, key: str) -> CachedStage | None:
    """Stage ``key`` as cached (its weights copied to this node), or None when it is not cached."""
    stages = stages_at(root)
    card = stages.card(key)
    return CachedStage.from_card(card, stages.weights(key), hit=True, wait_s=0.0) if card is not None else None


class _Heartbeat:
    """Touches the lock while the stage is computed, so waiters know the holder lives."""

    def __init__(self, touch: Callable[[], bool], period_s: float):
        self.touch, self.period_s = touch, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                if not self.touch():
                    return  # broken by someone who thought we were dead: nothing to keep
            except OSError:
                continue  # a store that did not answer this time; the next beat tries again

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cached_stage(
    root: str | Path, key: str, compute: Callable[[Path], dict], *,
    stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S, poll_s: float = POLL_S,
) -> CachedStage:
    """The stage under ``root/key`` (a folder or an object-store URI), computed by
    ``compute(weights_path) -> {"sparsity": ..., "architecture": ...}`` if absent.

    ``compute`` saves the stripped weights to the local path it is given and returns the measured
    sparsity and the architecture those weights belong to (any other key it returns, such as filter
    pruning's ``filter_widths``, is kept in the card). Exactly one caller across processes and nodes sharing ``root`` runs it; the others
    wait for its result. If ``compute`` raises, the lock is released and the error propagates
    (the next caller tries again).
    """
    stages = stages_at(root, stale_after_s=stale_after_s)
    started = time.perf_counter()
    while True:
        card = stages.card(key)
        if card is not None:
            return CachedStage.from_card(card, stages.weights(key), hit=True, wait_s=round(time.perf_counter() - started, 3))
        if stages.try_lock(key):
            break
        stages.break_if_stale(key, stale_after_s)
        time.sleep(poll_s * random.uniform(0.5, 1.5))  # jitter: contenders that saw each other part ways
    try:
        card = stages.card(key)  # finished between our last look and taking the lock
        if card is not None:
            return CachedStage.from_card(card, stages.weights(key), hit=True, wait_s=round(time.perf_counter() - started, 3))
        waited = time.perf_counter() - started
        tmp = stages.scratch(key)
        with _Heartbeat(lambda: stages.touch(key), heartbeat_s):
            made = compute(tmp)
        extra = {k: v for k, v in made.items() if k not in ("sparsity", "architecture")}  # e.g. filter_widths
        card = {"key": key, "sparsity": float(made["sparsity"]), "architecture": made["architecture"], **extra,
                "computed_on": socket.gethostname(), "computed_at": time.time()}
        stages.publish(key, tmp, card)
        return CachedStage.from_card(card, stages.weights(key), hit=False, wait_s=round(waited, 3))
    finally:
        stages.unlock(key)
