"""A device target on a real two-node Ray cluster on 127.0.0.1: the head runs the trials (1 CPU),
the second node joins as a user's device does, offering ``device:test`` and no CPUs, and measures
every trial's model until it is killed mid-search.

One search serves the three tests, since a cluster and a search cost minutes on this machine: three
trials one at a time, the device killed once the second has finished, so the first two are
measured there and the third finds it gone; the last test then resumes the finished run with the
device back, which measures the third there (it changes the run: it stays last). The nodes are tests/test_cluster.py's (``two_nodes``:
``ray start --block`` in its own process group, ``RAY_AUTH_MODE=disabled``), never stopped with
``ray stop``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from search.errors import RunDirError
from search.runner import resume_search, run_search
from search.space import load_space
from tests.test_cluster import _rows, two_nodes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a two-node Ray cluster: `make test-fast` leaves the module out
TARGETS = "measure.targets=[{name: host}, {name: test, resource: 'device:test'}]"
DEVICE = ("--num-cpus=0", '--resources={"device:test": 1}')  # as README "Measure on your device" has a user join
TRIALS, MEASURED = 3, 2  # the device is killed once MEASURED trials have finished
# The smallest search the pipeline runs: the device's measurements are under test, not the
# trial's stages. One stage for all trials (one resolution, no pruning: a 1-step fine-tune), float32
# (no calibration), short latency windows, and a timeout that a lost device's trial waits out once.
SMALLEST = ("search.resolution=64", "search.pruning.schedule=none", "search.quantization=float32",
            "base_training.steps=2", "fine_tune.steps=1", "measure.latency_warmup=1", "measure.latency_min_seconds=0.2",
            "measure.latency_max_seconds=1", "measure.latency_reference_seconds=0.5", "measure.target_timeout_s=60")


@dataclass(frozen=True)
class DeviceSearch:
    run_dir: Path
    rows: list[dict]  # trials.csv's trials, in the order they finished
    killed: bool
    lines: list[str]  # what the search printed


def _space(tmp: Path):
    return load_space(ROOT / "spaces" / "smoke.yaml", (
        f"storage.cache_dir={tmp / 'cache'}", f"storage.path={tmp / 'storage'}", TARGETS,
        "objectives=[{name: map50}, {name: size_bytes}, {name: latency_ms}, {name: latency_ms@test}]",
        f"budget.trials={TRIALS}", "budget.max_concurrent=1", *SMALLEST))


class Unplug:
    """Kills the device node (raylet and workers at once: unplugged) as soon as ``MEASURED`` trials
    have written their result, which each does after its device measurement; a thread, stopped on exit."""

    def __init__(self, nodes, trials_dir: Path):
        self.nodes, self.trials_dir = nodes, trials_dir
        self.killed, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            if len(list(self.trials_dir.glob("*/result.json"))) >= MEASURED:
                self.nodes.kill_worker()
                self.killed.set()
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def search_losing_its_device(tmp_path_factory) -> DeviceSearch:
    tmp = tmp_path_factory.mktemp("device-targets")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # the driver (this process) too
        with two_nodes(tmp, *DEVICE) as nodes, Unplug(nodes, tmp / "storage" / "runs" / "run" / "trials") as unplug:
            started = time.perf_counter()
            run_dir = run_search(_space(tmp), run_dir=tmp / "run", address=nodes.address, echo=lines.append).run_dir
            print(f"host + device search, the device lost after {MEASURED} trials: {time.perf_counter() - started:.0f}s wall")
    rows = sorted(_rows(run_dir), key=lambda r: float(r["finished_at"]))
    print("device:", [(r["trial_id"], r["node@test"][:8], r["latency_ms@test"], r["error@test"][:70]) for r in rows])
    return DeviceSearch(run_dir, rows, unplug.killed.is_set(), lines)


def test_every_trial_is_measured_on_the_device_node(search_losing_its_device):
    search = search_losing_its_device
    rows, measured = search.rows, search.rows[:MEASURED]
    assert len(rows) == TRIALS and all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    devices = {r["node@test"] for r in measured}
    rungs = json.loads((search.run_dir / "run.json").read_text())["latency_reference"]["rungs"]
    assert set(rungs) == {"float32@64", "int8@256"}  # the space's one resolution and mode (the baseline's too), the anchor
    assert len(devices) == 1 and "" not in devices  # one device measured every trial while it was there ...
    assert len({r["node"] for r in rows}) == 1 and rows[0]["node"] not in devices  # ... and every stage ran on the head
    for r in measured:
        assert r["error@test"] == "" and float(r["latency_ms@test"]) > 0 and int(r["memory_bytes@test"]) > 0
        assert float(r["latency_ms@test"]) == pytest.approx(float(r["latency_ref_ratio@test"]) * float(r["latency_ref_ms@test"]))
        assert float(r["latency_ref_ms@test"]) == pytest.approx(float(r["latency_ref_link@test"])
                                                                * float(r["latency_anchor_ms@test"]))
        # The same reference as on the host: the driver's rung of the trial's resolution, shipped to the device.
        assert r["latency_ref_sha256@test"] == r["latency_ref_sha256"] == rungs["float32@64"]["sha256"]
        assert r["latency_ref_resolution@test"] == r["latency_ref_resolution"] == "64"
        assert r["latency_ref_mode@test"] == r["latency_ref_mode"] == "float32"
        assert r["litert@test"] and r["arch@test"] and int(r["cores@test"]) >= 1 and r["delegate@test"].startswith("XNNPACK")
    baseline = json.loads((search.run_dir / "trials.json").read_text())["baseline"]
    assert baseline["metrics"]["latency_ms@test"] > 0  # the baseline is measured there too
    card = json.loads((search.run_dir / "export" / "model.json").read_text())
    assert devices.pop() in card["how_measured"]["latency@test"]
    assert card["latency_reference"]["sha256"] == rungs["float32@64"]["sha256"]
    assert (card["latency_reference"]["resolution"], card["latency_reference"]["mode"]) == (64, "float32")


def test_a_device_lost_mid_search_costs_only_its_measurements(search_losing_its_device):
    search = search_losing_its_device
    assert search.killed, "the device was never killed"
    rows = search.rows
    assert len(rows) == TRIALS and all(r["status"] == "completed" for r in rows), search.lines[-20:]  # nothing else lost
    assert all(r["error@test"] == "" and float(r["latency_ms@test"]) > 0 for r in rows[:MEASURED])  # before the kill
    lost = rows[MEASURED:]  # one trial at a time: the device was gone before the next one measured
    assert lost and all(r["latency_ms@test"] == "" and r["error@test"] for r in lost)
    assert all("device:test" in r["error@test"] for r in lost)  # the reason names the device
    assert all(float(r["latency_ms"]) > 0 and r["map50"] != "" and r["feasible"] == "False" for r in lost)
    assert json.loads((search.run_dir / "run.json").read_text())["status"] == "finished"


def test_resume_measures_again_what_the_lost_device_missed(search_losing_its_device, tmp_path, monkeypatch):
    search = search_losing_its_device
    before = {r["trial_id"]: r for r in search.rows}
    lost = [r["trial_id"] for r in search.rows[MEASURED:]]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    lines: list[str] = []
    with two_nodes(tmp_path, *DEVICE) as nodes:  # the device is back (a new node, with a new head)
        started = time.perf_counter()
        resume_search(search.run_dir, address=nodes.address, echo=lines.append)
        print(f"resume, measuring {len(lost)} trial again on the device: {time.perf_counter() - started:.0f}s wall")
    rows = {r["trial_id"]: r for r in _rows(search.run_dir)}
    assert set(rows) == set(before), lines[-20:]  # the budget was spent: no trial added, none lost
    for trial_id in lost:  # measured there now, and rankable again
        row = rows[trial_id]
        assert row["error@test"] == "" and float(row["latency_ms@test"]) > 0 and row["node@test"], lines[-20:]
        assert row["feasible"] != "False" and row["map50"] == before[trial_id]["map50"]
    for trial_id in set(before) - set(lost):  # what the device had measured stays as it was
        assert rows[trial_id]["latency_ms@test"] == before[trial_id]["latency_ms@test"]
    run = json.loads((search.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and len(run["resumed"]) == 1
    # the export is made again from the complete record; the earlier one is kept whole
    assert (search.run_dir / "export.before-resume-1" / "model.json").exists()
    assert (search.run_dir / "export" / "model.json").exists()
    with pytest.raises(RunDirError, match="nothing to resume"):  # now every trial has every target
        resume_search(search.run_dir)
