"""What a search survives: a stopped, then killed driver (`resume` finishes the same search), and
trials that raise (recorded, Optuna told FAIL, not retried).

One chain of three real CLI sessions on the smoke space, one trial at a time: the first is
SIGTERMed after its first trial (Tune saves its state; exit 130, run.json ``interrupted``), the
second SIGKILLed after its second trial (nothing saved on the way out), the third runs to the end.
No finished trial is lost or run again, and the final count is the budget.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 3


def _rows(run_dir: Path) -> list[dict]:
    try:
        with (run_dir / "trials.csv").open() as f:
            return [r for r in csv.DictReader(f) if r["status"] != "baseline"]  # the trials, not the baseline
    except FileNotFoundError:
        return []


def _session(*args: str, log: Path) -> subprocess.Popen:
    # Its own process group: the embedded Ray it starts can be cleaned up by the group id afterwards.
    return subprocess.Popen([sys.executable, "-m", "search", *args], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop_when(session: subprocess.Popen, run_dir: Path, *, rows: int, sig: int, log: Path) -> int:
    deadline = time.monotonic() + 900
    while len(_rows(run_dir)) < rows:
        assert session.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.5)
    session.send_signal(sig)
    code = session.wait(timeout=300)
    try:
        os.killpg(session.pid, signal.SIGKILL)  # what the driver left behind (its embedded Ray)
    except ProcessLookupError:
        pass
    return code


@pytest.mark.slow  # three driver processes, a stop and a kill: fault tolerance, as the cluster tests
def test_stopped_then_killed_driver_resumes_to_the_budget(tmp_path):
    run_dir = tmp_path / "run"
    space = ["spaces/smoke.yaml", "--run-dir", str(run_dir), "--set", f"storage.cache_dir={tmp_path / 'cache'}",
             "--set", "budget.max_concurrent=1", "--set", f"budget.trials={BUDGET}"]

    log = tmp_path / "first.log"
    code = _stop_when(_session("run", *space, log=log), run_dir, rows=1, sig=signal.SIGTERM, log=log)
    first = _rows(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    print(f"SIGTERM: exit {code}, {len(first)} trials recorded, run.json {info['status']}")
    assert code == 130, log.read_text()[-3000:]
    assert info["status"] == "interrupted" and len(first) >= 1
    assert "SearchInterrupted" in log.read_text() and f"python -m search resume {run_dir}" in log.read_text()

    log = tmp_path / "second.log"
    code = _stop_when(_session("resume", str(run_dir), log=log), run_dir, rows=len(first) + 1, sig=signal.SIGKILL, log=log)
    second = _rows(run_dir)
    print(f"SIGKILL: exit {code}, {len(second)} trials recorded, run.json {json.loads((run_dir / 'run.json').read_text())['status']}")
    assert code == -signal.SIGKILL and len(second) > len(first)

    log = tmp_path / "third.log"
    session = _session("resume", str(run_dir), log=log)
    assert session.wait(timeout=900) == 0, log.read_text()[-3000:]
    final = _rows(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    print(f"resumed: {len(final)} trials, {info['completed_trials']} completed, {info['failed_trials']} failed")

    assert len(final) == BUDGET and len({r["trial_id"] for r in final}) == BUDGET
    assert info["status"] == "finished" and info["completed_trials"] + info["failed_trials"] == BUDGET
    assert len(info["resumed"]) == 2
    # Finished trials were kept as they were, not run again.
    by_id = {r["trial_id"]: r for r in final}
    for before in second:
        assert {key: by_id[before["trial_id"]][key] for key in before} == before
    # The sampler kept its history: the restored Optuna study holds every trial of all three sessions.
    # (The study lives in a journal now, which also keeps the trial that was RUNNING when the
    # driver was killed: count the trials that finished.)
    assert len([t for t in saved_study(run_dir).trials if t.state.is_finished()]) == BUDGET
    assert (run_dir / "pareto.csv").exists() and (run_dir / "export" / "model.tflite").exists()


def saved_study(run_dir: Path):
    """The Optuna study inside Tune's saved searcher state: what the sampler will learn from."""
    import pickle

    # One file per driver session, named by the session's start time; the last one holds the whole
    # history. Not by mtime: Tune re-syncs every state file when a session ends, so all share one.
    state = max((run_dir / "tune").glob("searcher-state-*.pkl"), key=lambda path: path.name)
    with state.open("rb") as f:
        return _find_study(pickle.load(f))


def _find_study(obj, depth: int = 0):
    import optuna

    if isinstance(obj, optuna.Study) or depth > 4:
        return obj if isinstance(obj, optuna.Study) else None
    values = obj.values() if isinstance(obj, dict) else getattr(obj, "__dict__", {}).values()
    return next((found for value in values if (found := _find_study(value, depth + 1)) is not None), None)


def test_a_trial_that_raises_is_recorded_told_fail_and_not_retried(tmp_path):
    """A trial's own error is data: its row has the error, Optuna sees FAIL, Ray does not retry it."""
    import optuna

    from search.inputs import load_data
    from search.record import read_rows
    from search.space import load_space
    from search.trial import TrialContext
    from search.tuner import TrialRecorder, run_tuner, start_ray, stop_ray

    space = load_space(ROOT / "spaces" / "smoke.yaml", (f"storage.cache_dir={tmp_path / 'cache'}", "budget.trials=2",
                                                        "budget.max_retries=2"))
    missing = tmp_path / "no-such-base.h5"  # every trial fails in its first step, in seconds
    context = TrialContext(space=space, dataset=load_data(space), base_weights=str(missing),
                           stages_dir=str(tmp_path / "stages"))
    lines: list[str] = []
    try:
        start_ray(None)
        run_tuner(space, context, artifacts_dir=str(tmp_path / "trials"), run_dir=tmp_path,
                  recorder=TrialRecorder(tmp_path, budget=2, echo=lines.append))
    finally:
        stop_ray()

    rows = read_rows(tmp_path / "trials.csv")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["error"].startswith(("OSError", "FileNotFoundError")) and "no-such-base.h5" in r["error"] for r in rows), rows
    assert not any("retrying" in line for line in lines)
    study = saved_study(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
