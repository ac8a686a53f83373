"""A real two-node Ray cluster on this machine: a search uses both nodes and survives losing one.

The nodes are two ``ray start --block`` processes (head and worker, 1 CPU each, bound to
127.0.0.1, token authentication disabled), each in its own process group, so the worker node can
be killed alone, and both are torn down by their group ids -- never with ``ray stop``, which would
stop every Ray on the machine.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from search import storage as store
from search.runner import run_search
from search.space import load_space
from tests.conftest import S3_ENV

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# The nodes' workers reach the tests' local S3 server (tests/conftest.py) with its credentials.
NODE_ENV = {**os.environ, **S3_ENV, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Each test starts Ray (most a two-node cluster): `make test-fast` leaves the module out.
pytestmark = pytest.mark.slow


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any key Ray does not know or a wrong type
    types = config["available_node_types"]
    assert config["head_node_type"] in types and len(types) == 2
    assert any("make setup" in c for c in config["setup_commands"])
    assert any("ray start --address=$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])


def test_every_key_of_cluster_yaml_is_commented():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    keys = [line for line in lines if line.strip() and not line.lstrip().startswith(("#", "-")) and ":" in line]
    uncommented = [line for line in keys if "#" not in line]
    # A key whose comment is on the line above counts too.
    uncommented = [line for line in uncommented if not lines[lines.index(line) - 1].lstrip().startswith("#")]
    assert uncommented == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                             "--block", *args], env=NODE_ENV, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop_node(node: subprocess.Popen) -> None:
    """SIGTERM the node's process group (``ray start --block`` stops its children), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            break
        try:
            node.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(node.pid, signal.SIGKILL)  # whatever the group still holds (workers of the node)
    except ProcessLookupError:
        pass


def _alive_nodes(address: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{address}', logging_level='ERROR', log_to_driver=False);"
                               "print(sum(n['Alive'] for n in ray.nodes()))"],
        env=NODE_ENV, capture_output=True, text=True, timeout=60,
    )
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


@dataclass
class TwoNodes:
    address: str
    head: subprocess.Popen
    worker: subprocess.Popen

    def kill_worker(self) -> None:
        os.killpg(self.worker.pid, signal.SIGKILL)  # the node dies at once: raylet and its workers
        self.worker.wait(timeout=30)


@contextmanager
def two_nodes(tmp_path: Path, *worker_args: str) -> Iterator[TwoNodes]:
    """A head and a worker node, 1 CPU each, on 127.0.0.1; torn down also when the caller fails.
    ``worker_args``: more ``ray start`` options of the worker (a later ``--num-cpus`` wins)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too deep.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = _start_node("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                       log=tmp_path / "head.log")
    worker = None
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(address) < 1:
            assert time.monotonic() < deadline and head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(1)
        worker = _start_node(f"--address={address}", *worker_args, log=tmp_path / "worker.log")
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(1)
        yield TwoNodes(address, head, worker)
    finally:
        if worker is not None:
            _stop_node(worker)
        _stop_node(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_two_nodes(tmp_path, monkeypatch):
    """A head and a worker node, 1 CPU each, on 127.0.0.1."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the driver (this process) too
    with two_nodes(tmp_path) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """``storage.cache_dir`` of this module's searches. With ``storage.path`` set, the data, the
    base model and the stage cache go to the storage (every node must read them), so each search
    generates and trains its own small ones there."""
    return tmp_path_factory.mktemp("cluster-cache")


def _space(cache: Path, storage: Path, *extra: str):
    return load_space(ROOT / "spaces" / "smoke.yaml",
                      (f"storage.cache_dir={cache}", f"storage.path={storage}", *extra))


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "trials.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["status"] != "baseline"]  # the trials, not the baseline


def test_smoke_search_runs_on_both_nodes(ray_two_nodes, shared_cache, tmp_path):
    lines: list[str] = []
    started = time.perf_counter()
    run_dir = run_search(_space(shared_cache, tmp_path / "storage"), run_dir=tmp_path / "run",
                         address=ray_two_nodes.address, echo=lines.append).run_dir
    print(f"two-node smoke search: {time.perf_counter() - started:.0f}s wall")

    rows = _rows(run_dir)
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert len({r["node"] for r in rows}) == 2  # node ids: both nodes share this machine's host name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["ray_address"] == ray_two_nodes.address
    # Every trial's files are in the storage every node reaches, not on the node that ran it.
    for r in rows:
        assert Path(r["model_path"]).is_relative_to(tmp_path / "storage") and Path(r["model_path"]).exists()
        assert r["stage_cache"] in ("hit", "miss")
    assert list((tmp_path / "storage" / "stages").glob("*/weights.h5"))
    assert list((tmp_path / "storage" / "base").glob("*.h5")) and (tmp_path / "storage" / "data").is_dir()


def test_every_node_is_asked_whether_it_sees_what_trials_read(ray_two_nodes, tmp_path):
    from search.tuner import start_ray, stop_ray, unreadable_on_nodes

    missing = str(tmp_path / "not-mounted-here" / "base.h5")
    start_ray(ray_two_nodes.address)
    try:
        found = unreadable_on_nodes([str(ROOT / "README.md"), missing])
    finally:
        stop_ray()
    assert [path for _, path in found] == [missing, missing]  # seen missing on each node ...
    assert len({node for node, _ in found}) == 2  # ... by a task on that node


def test_a_killed_worker_node_loses_no_trial(ray_two_nodes, shared_cache, tmp_path):
    storage = tmp_path / "storage"
    trials_dir = storage / "runs" / "run" / "trials"
    killed: list[float] = []

    def kill_the_worker_once_both_nodes_work():
        # Two trials run at once on two 1-CPU nodes: when two trial folders exist, one is on the worker.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if trials_dir.exists() and len(list(trials_dir.iterdir())) >= 2:
                time.sleep(3)  # well into its fine-tune
                ray_two_nodes.kill_worker()
                killed.append(time.monotonic())
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_the_worker_once_both_nodes_work, daemon=True)
    killer.start()
    lines: list[str] = []
    run_dir = run_search(_space(shared_cache, storage, "budget.max_retries=2"), run_dir=tmp_path / "run",
                         address=ray_two_nodes.address, echo=lines.append).run_dir
    killer.join(timeout=5)

    assert killed, "the worker node was never killed"
    rows = _rows(run_dir)
    print("node kill:", [(r["trial_id"], r["status"], r["node"][:8], r["error"][:60]) for r in rows])
    print("\n".join(line for line in lines if "retrying" in line or "FAILED" in line))
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3  # the budget, each trial once
    assert any("retrying" in line for line in lines), lines  # the lost trial was retried
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["completed_trials"] == 3


def test_a_search_on_both_nodes_keeps_everything_in_an_object_store(ray_two_nodes, shared_cache, s3_storage, tmp_path):
    # One resolution, no pruning: all three trials need the same prune + fine-tune stage, and two
    # start at once on the two nodes, so the object store's lock decides who computes it.
    space = _space(shared_cache, s3_storage, "search.resolution=64", "search.pruning.schedule=none")
    started = time.perf_counter()
    run_dir = run_search(space, run_dir=tmp_path / "run", address=ray_two_nodes.address, echo=[].append).run_dir
    print(f"two-node smoke search with s3 storage: {time.perf_counter() - started:.0f}s wall")

    rows = _rows(run_dir)
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert len({r["node"] for r in rows}) == 2
    assert sorted(r["stage_cache"] for r in rows) == ["hit", "hit", "miss"]  # computed once, in the store
    trials = store.join(s3_storage, "runs", "run", "trials")
    for r in rows:  # every trial's files are in the bucket, none in the run directory
        assert r["model_path"] == store.join(trials, r["trial_id"], "model.tflite")
        for name in ("model.tflite", "result.json"):
            assert store.exists(store.join(trials, r["trial_id"], name)), name
    assert not (run_dir / "trials").exists()
    assert store.exists(store.join(s3_storage, "stages", rows[0]["stage_key"], "weights.h5"))
    assert [e.name.endswith(".h5") for e in store.entries(store.join(s3_storage, "base"))] == [True]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["storage"]["trials"] == trials
    exported = next(r for r in rows if r["trial_id"] == info["exported_trial"])
    assert (run_dir / "export" / "model.tflite").read_bytes() == store.read_bytes(exported["model_path"])
