"""Storage verbs and the stage cache on a real S3 API (a local S3 server), and on a folder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from search import storage
from search.stage_cache import cached, cached_stage
from tests.test_stage_cache import COMPETITOR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["folder", "s3"])
def location(request, tmp_path) -> str:
    return str(tmp_path / "store") if request.param == "folder" else request.getfixturevalue("s3_storage")


def test_join_keeps_the_query_at_the_end():
    assert storage.join("s3://b/p?endpoint_override=h:1", "runs", "t/") == "s3://b/p/runs/t?endpoint_override=h:1"
    assert storage.join("/mnt/x", "runs", "t") == "/mnt/x/runs/t"
    assert storage.is_uri("gs://b/p") and not storage.is_uri("/mnt/x") and not storage.is_uri("file:///mnt/x")


def test_verbs_round_trip(location, tmp_path):
    item = storage.join(location, "a", "b.bin")
    assert storage.read_bytes(item) is None and not storage.exists(item)
    storage.write_bytes(item, b"\x00weights")
    assert storage.read_bytes(item) == b"\x00weights" and storage.exists(item)
    assert [e.name for e in storage.entries(storage.join(location, "a"))] == ["b.bin"]
    assert abs(storage.entries(storage.join(location, "a"))[0].mtime - time.time()) < 60
    copy = storage.local_copy(item, cache=tmp_path / "copies")
    assert copy.read_bytes() == b"\x00weights"
    storage.makedirs(storage.join(location, "empty"))
    assert storage.exists(storage.join(location, "empty"))
    storage.delete(item)
    assert not storage.exists(item) and storage.entries(storage.join(location, "a")) == []
    assert storage.check_writable(location) is None


def test_an_unwritable_store_says_why(s3_server):
    problem = storage.check_writable(f"s3://no-such-bucket/x?endpoint_override={s3_server}&scheme=http&region=us-east-1")
    assert problem is not None and "bucket does not exist" in problem


def test_two_processes_needing_the_same_stage_in_s3_compute_it_once(s3_storage, tmp_path):
    counter = tmp_path / "count.txt"
    root = storage.join(s3_storage, "stages")
    runs = [subprocess.Popen([sys.executable, "-c", COMPETITOR, root, str(counter)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=120)[0].strip() for p in runs)
    assert counter.read_text() == "computed\n"
    assert outputs == ["hit 0.5 weights", "miss 0.5 weights"]
    assert storage.entries(storage.join(root, "k.lock")) == []  # the holder's lock entry is gone
    assert storage.read_bytes(storage.join(root, "k", "weights.h5")) == b"weights"


def test_a_dead_holders_lock_entry_in_s3_is_broken(s3_storage):
    root = storage.join(s3_storage, "stages")
    storage.write_bytes(storage.join(root, "k.lock", "1-deadhost-1-0"), b"{}")  # a holder that died
    time.sleep(2.5)  # the store's clock: modification times have whole seconds
    stage = cached_stage(root, "k", lambda weights: _made(weights, b"w", 0.25), stale_after_s=2, poll_s=0.05)
    assert not stage.hit and stage.sparsity == 0.25 and stage.weights.read_bytes() == b"w"
    assert cached(root, "k").weights.read_bytes() == b"w" and cached(root, "k").architecture == {"family": "test"}
    assert cached(root, "other") is None


def _made(weights, content: bytes, sparsity: float) -> dict:
    weights.write_bytes(content)
    return {"sparsity": sparsity, "architecture": {"family": "test"}}


def test_a_live_holder_is_waited_for_not_broken(s3_storage):
    root = storage.join(s3_storage, "stages")
    holder = storage.join(root, "k.lock", "1-livehost-1-0")
    storage.write_bytes(holder, b"{}")
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        _cached_stage_within(root, seconds=3.0)
    assert time.perf_counter() - started >= 3.0 and storage.exists(holder)  # never computed meanwhile


def _cached_stage_within(root: str, *, seconds: float):
    import threading

    done = threading.Event()
    result = []

    def ask():
        result.append(cached_stage(root, "k", lambda w: _made(w, b"mine", 1.0), poll_s=0.1))
        done.set()

    threading.Thread(target=ask, daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError("still waiting for the holder")
    return result[0]
