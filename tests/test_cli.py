"""The command line as a process: `validate`, and a user error as one pinned line with exit code 2."""

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


# Every other kind of bad input has its own test in tests/test_bad_input.py.
