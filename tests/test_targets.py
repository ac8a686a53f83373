"""Latency targets in the space file, their objectives, and how a trial records them (no Ray here:
the two-node device tests are tests/test_device_targets.py)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from search.objectives.targets import HOST, Target, split, target_columns
from search.record import COLUMNS, COMPLETED, TrialRecord, read_rows, records_to_csv, write_records
from search.space import load_space
from tests.test_cli import HEAVY_FOR_VALIDATE, search_reporting_imports
from tests.test_space import error_of, write_space

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "measure.targets=[{name: host}, {name: test, resource: 'device:test'}]"


def test_host_is_the_default_target_and_adds_nothing():
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    assert space.measure.targets == (Target(HOST),) and space.measure.devices == ()
    assert not [n for n in space.objective_table if "@" in n]


def test_a_device_target_adds_its_objectives_usable_as_objectives_and_constraints(tmp_path):
    path = write_space(tmp_path, lambda raw: raw["objectives"].append({"name": "latency_ms@test", "direction": "minimize"}))
    space = load_space(path, (DEVICE, "constraints.max_memory_bytes@test=50000000"))
    assert space.measure.devices == (Target("test", "device:test"),)
    assert {"latency_ms@test", "latency_p90_ms@test", "memory_bytes@test"} <= set(space.objective_table)
    assert space.objective_table["memory_bytes@test"].kind == "size"
    assert "latency_ms@test" in space.metric_names and "memory_bytes@test" in space.measured_names
    # The trial's pipeline measures the host's; the device's come from its node (search.targets).
    assert not [n for n in space.trial_measured_names if "@" in n]
    assert split("latency_ms@test") == ("latency_ms", "test") and split("latency_ms") == ("latency_ms", None)


@pytest.mark.parametrize("targets, expected", [
    ("[{name: rpi5}]", "measure.targets[0].resource: must be given for every target but host"),
    ("[{name: host, resource: 'device:x'}]", "measure.targets[0].resource: must be given for every target but host"),
    ("[{name: a, resource: r}, {name: a, resource: s}]", "measure.targets[1].name: each target may appear once"),
    ("[{name: 'a@b', resource: r}]", "measure.targets[0].name: must be letters, digits"),
    ("[]", "measure.targets: must be a non-empty list of {name, resource}, but got []"),
    ("[{name: a, resource: r, cores: 4}]", "measure.targets[0].cores: is not a known key"),
])
def test_bad_targets_are_one_line(targets, expected):
    assert expected in error_of(ROOT / "spaces" / "smoke.yaml", (f"measure.targets={targets}",))


def test_an_objective_of_a_target_the_space_does_not_list_is_refused(tmp_path):
    path = write_space(tmp_path, lambda raw: raw["objectives"].append({"name": "latency_ms@rpi5", "direction": "minimize"}))
    message = error_of(path, (DEVICE,))
    assert "objectives[3].name: must be one of the names below, but got 'latency_ms@rpi5'" in message
    assert "latency_ms@test, latency_p90_ms@test, memory_bytes@test" in message  # the allowed names say which exist


def test_validate_with_a_device_target_imports_no_tensorflow_or_ray():
    done, report, _ = search_reporting_imports("validate", str(ROOT / "spaces" / "yolov4_tiny.yaml"), "--set", DEVICE,
                                               "--set", "constraints.max_latency_ms@test=100")
    assert report["exit"] == 0, done.stderr
    assert not set(report["imported"]) & set(HEAVY_FOR_VALIDATE), report


def test_a_target_s_columns_follow_the_measured_ones_and_a_missing_one_says_why(tmp_path):
    measured = TrialRecord("a", COMPLETED, metrics={"latency_ms": 5.0, "latency_ms@test": 7.5, "memory_bytes@test": 123,
                                                    "node@test": "n2", "cpu_model@test": "cpu", "error@test": ""})
    missing = TrialRecord("b", COMPLETED, metrics={"latency_ms": 6.0, "error@test": "no node offering device:test ..."})
    write_records(tmp_path, [measured, missing])
    rows = read_rows(tmp_path / "trials.csv")
    header = list(rows[0])
    assert header[: len(COLUMNS) - len(COLUMNS[COLUMNS.index("sparsity"):])] == list(COLUMNS[: COLUMNS.index("sparsity")])
    assert header[COLUMNS.index("sparsity"): COLUMNS.index("sparsity") + len(target_columns("test"))] == list(
        target_columns("test"))
    assert rows[0]["latency_ms@test"] == "7.5" and rows[0]["node@test"] == "n2"
    assert rows[1]["latency_ms@test"] == "" and rows[1]["error@test"].startswith("no node offering")
    assert math.isnan(missing.value("latency_ms@test")) and measured.value("latency_ms@test") == 7.5
    assert "latency_ms@test" not in records_to_csv([TrialRecord("c", COMPLETED, metrics={"latency_ms": 1.0})])


def test_a_trial_missing_an_objective_is_kept_but_infeasible(tmp_path):
    from search.tuner import missing_is_infeasible

    path = write_space(tmp_path, lambda raw: raw["objectives"].append({"name": "latency_ms@test", "direction": "minimize"}))
    space = load_space(path, (DEVICE,))
    values = {"map50": 0.5, "size_bytes": 10, "latency_ms": 1.0}
    lost = missing_is_infeasible(TrialRecord("a", COMPLETED, metrics={**values, "error@test": "gone"}), space)
    kept = missing_is_infeasible(TrialRecord("b", COMPLETED, metrics={**values, "latency_ms@test": 2.0}), space)
    assert lost.completed and lost.feasible is False and kept.feasible is None


def test_the_device_extra_pins_what_the_package_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {d.split("==")[0].split("[")[0]: d.split("==")[1] for d in project["dependencies"]}
    device = {d.split("==")[0]: d.split("==")[1] for d in project["optional-dependencies"]["device"]}
    assert set(device) == {"numpy", "ai-edge-litert", "ray"} and all(pins[name] == v for name, v in device.items())
    readme = (ROOT / "README.md").read_text()
    assert all(f"{name}=={version}" in readme for name, version in device.items())  # the device's install line


def test_what_a_device_imports_needs_only_the_device_extra():
    import subprocess
    import sys

    # search.timing.rungs: the device unpickles the Rung it is sent, and times against it there.
    code = ("import sys, search.timing.on_node, search.timing.rungs, search.node_lock; "
            "print(sorted({m.split('.')[0] for m in sys.modules if not m.startswith('_')} - "
            "set(sys.stdlib_module_names) - {'search'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out.strip())) <= {"numpy"}  # (LiteRT and Ray when it runs; nothing else)
