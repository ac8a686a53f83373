"""The node lock between real processes: a measurement waits for computing trials, and computing waits for it."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from search import node_lock


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(node_lock, "LOCK_DIR", tmp_path)  # not the machine's lock: other searches may be running
    return tmp_path


def _hold(kind: str, lock_dir, seconds: float, events) -> None:
    node_lock.LOCK_DIR = lock_dir
    with node_lock.shared() if kind == "shared" else node_lock.exclusive():
        events.put((kind, "in", time.monotonic()))
        time.sleep(seconds)
        events.put((kind, "out", time.monotonic()))


def _start(kind: str, lock_dir, seconds: float, events) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=_hold, args=(kind, lock_dir, seconds, events))
    process.start()
    return process


def _events(queue, count: int) -> dict:
    return {(kind, edge): at for kind, edge, at in (queue.get(timeout=60) for _ in range(count))}


def test_a_measurement_waits_for_running_steps_and_holds_back_new_ones(private_lock_dir):
    events = multiprocessing.get_context("spawn").Queue()
    with node_lock.shared():  # a step running
        measuring = _start("exclusive", private_lock_dir, 1.5, events)
        time.sleep(1.0)
        assert events.empty()  # the measurement waits for the step
        released = time.monotonic()
    seen = _events(events, 1)
    assert seen[("exclusive", "in")] >= released
    with node_lock.shared():  # the next step waits for the measurement to end
        started = time.monotonic()
    seen.update(_events(events, 1))
    assert started >= seen[("exclusive", "out")]
    measuring.join()


def test_steps_run_together(private_lock_dir):
    events = multiprocessing.get_context("spawn").Queue()
    with node_lock.shared():
        other = _start("shared", private_lock_dir, 0.1, events)
        seen = _events(events, 2)  # it got in and out while we held the lock shared
        assert seen[("shared", "out")] > seen[("shared", "in")]
    other.join()
