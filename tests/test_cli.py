"""The command line: one line per user error, exit code 2, nothing created or started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "spaces" / "smoke.yaml"


def search(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_validate_ok():
    done = search("validate", str(SMOKE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{SMOKE}: valid.")


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


def test_existing_run_dir_is_refused_before_anything_runs(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    done = search("run", str(SMOKE), "--run-dir", str(run_dir))
    assert done.returncode == 2
    assert done.stderr == f"RunDirError: {run_dir}: exists already; a run is never overwritten (choose another --run-dir)\n"
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]


def test_unreachable_address_is_refused_before_anything_runs(tmp_path):
    run_dir = tmp_path / "run"
    done = search("run", str(SMOKE), "--run-dir", str(run_dir), "--address", "127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.startswith("ClusterError: --address 127.0.0.1:9: no Ray head answers there")
    assert done.stderr.count("\n") == 1
    assert not run_dir.exists()
