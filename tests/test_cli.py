"""The command line as a process: `validate`, and a user error as one pinned line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "spaces" / "smoke.yaml"


def search(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_validate_ok():
    done = search("validate", str(SMOKE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{SMOKE}: valid.")
    assert ", sparse_encoding=true;" in done.stdout  # a setting that changes the artifact is shown


def test_user_error_is_one_pinned_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("sampler: tpe", "sampler: tpee"))
    done = search("validate", str(bad))
    assert done.returncode == 2
    assert done.stderr == (
        f"SpaceError: {bad}: budget.sampler: must be one of the names below, but got 'tpee'; "
        "allowed: tpe, nsga2, random; did you mean 'tpe'?\n"
    )
    assert done.stdout == ""


# `python -m search ARGS` in a fresh interpreter that then says which heavy packages it imported.
_REPORT_IMPORTS = """
import json, runpy, sys
sys.argv = ["search", *sys.argv[1:]]
try:
    runpy.run_module("search", run_name="__main__", alter_sys=True)
except SystemExit as done:
    code = done.code
heavy = [name for name in ("tensorflow", "tf_keras", "tensorflow_model_optimization", "ray", "optuna") if name in sys.modules]
print(json.dumps({"exit": code, "imported": heavy}))
"""
HEAVY_FOR_VALIDATE = ["tensorflow", "tf_keras", "tensorflow_model_optimization", "ray"]


def search_reporting_imports(*args: str) -> tuple[subprocess.CompletedProcess, dict, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _REPORT_IMPORTS, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    seconds = time.perf_counter() - start
    return done, json.loads(done.stdout.splitlines()[-1]), seconds


def test_validate_does_not_import_tensorflow():
    # Every table it reads (modes, schedules, structures, samplers, formats, families, objectives)
    # is TensorFlow-free, so checking a space file is instant, however big the search it describes.
    done, report, seconds = search_reporting_imports("validate", str(ROOT / "spaces" / "yolov4_tiny.yaml"))
    assert report["exit"] == 0, done.stderr
    assert done.stdout.startswith(f"{ROOT / 'spaces' / 'yolov4_tiny.yaml'}: valid.")
    assert not set(report["imported"]) & set(HEAVY_FOR_VALIDATE), report
    assert seconds < 2.0


def test_validate_checks_darknet_files_without_tensorflow(tmp_path):
    from search.models.yolov4_tiny.darknet import yolov4_tiny_cfg_text

    cfg, weights = tmp_path / "yolov4-tiny-3.cfg", tmp_path / "truncated.weights"
    cfg.write_text(yolov4_tiny_cfg_text(num_classes=3, resolution=64))
    weights.write_bytes(b"\x00" * 100)
    done, report, _ = search_reporting_imports("validate", str(SMOKE), "--set", f"model.cfg={cfg}",
                                               "--set", f"model.weights={weights}")
    assert report["exit"] == 2 and done.stderr.startswith("WeightsError: ") and str(weights) in done.stderr
    assert not set(report["imported"]) & set(HEAVY_FOR_VALIDATE), report


# Every other kind of bad input has its own test in tests/test_bad_input.py.
