"""A node-local readers-writer lock, so that latency is measured with the node otherwise idle.

Computing holds the lock ``shared``: any number of holders run together. A latency measurement
holds it ``exclusive``: it waits until the running steps finish, and no one starts a step until
it is done. A trial holds it shared for each of its steps (its imports too: TensorFlow takes
seconds of CPU); the search driver for its own heavy moments (training the base model, proposing
trials, writing the report and export). Per step, not per trial: a measurement then waits for
the others' current steps, not for their whole trials, and no core idles long.

Without this, a trial timing its model on one core while another fine-tunes on the other reports
whatever the memory bus allowed that second, not the model's latency.

``flock`` has no writer preference, so a second lock, the turnstile, stops new readers from
slipping in while a writer waits. The files live in the node's temp folder: the lock is per
machine, which is what a measurement needs; trials on other nodes do not disturb it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR = Path(os.environ.get("SEARCH_LOCK_DIR", tempfile.gettempdir()))
_MAIN = "yolo-search-node.lock"
_TURNSTILE = "yolo-search-node.turnstile"


def _open(name: str) -> int:
    return os.open(LOCK_DIR / name, os.O_RDWR | os.O_CREAT, 0o666)


@contextmanager
def shared():
    """Hold the node lock shared (a compute stage)."""
    turnstile, main = _open(_TURNSTILE), _open(_MAIN)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # queue behind a waiting measurement
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(main, fcntl.LOCK_SH)
        yield
    finally:
        os.close(main)  # closing releases the flock
        os.close(turnstile)


@contextmanager
def exclusive():
    """Hold the node lock alone (a latency measurement)."""
    turnstile, main = _open(_TURNSTILE), _open(_MAIN)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # no new compute stage may start from now on
        fcntl.flock(main, fcntl.LOCK_EX)  # wait for the running ones to finish
        yield
    finally:
        os.close(main)
        os.close(turnstile)


@contextmanager
def node_guard(*, alone: bool = False):
    """The guard ``search.trial.run_trial`` wraps each step in on a cluster node: the lock shared
    for a computing step, exclusive for one that times (``alone``). Yields the seconds waited."""
    asked = time.perf_counter()
    with exclusive() if alone else shared():
        yield round(time.perf_counter() - asked, 3)
