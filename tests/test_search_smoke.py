"""The whole product on the smoke space: a real local Ray, real Optuna, every file a run leaves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from search.errors import RunDirError
from search.runner import run_search
from search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
# The seeded random search whose trials were recorded before the redesign (issue 10): the same
# parameters must give the same mAP and size after any change that claims to keep behaviour.
# The seeded smoke search whose first five trials were recorded before the redesign
# (tests/fixtures/smoke_random_5_trials.json); the random sampler proposes the same first three
# whatever the budget, so three of them (the smoke space's own budget) keep the pin and save time.
PINNED_TRIALS = 3
PINNED_SEARCH = ("budget.sampler=random", f"budget.trials={PINNED_TRIALS}")
# A limit the pinned search half meets (int8 is 6.0 MB, float32 23.5 MB); the random sampler
# proposes the same trials with it or without it.
CONSTRAINT = "constraints.max_size_bytes=10000000"
# Pinned per vector ISA: TensorFlow's float kernels sum in another order with AVX-512 than with
# AVX2, so the same seeded training gives other mAP digits (the sizes and proposals are the same).
PINNED_FILES = {"avx2": "smoke_random_5_trials.json", "avx512": "smoke_random_5_trials_avx512.json"}


def _vector_isa() -> str | None:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else None


ISA = _vector_isa()
PINNED = json.loads((ROOT / "tests" / "fixtures" / PINNED_FILES.get(ISA, PINNED_FILES["avx2"])).read_text())["trials"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("smoke")
    lines: list[str] = []
    # Relative paths, as a user types them: Ray runs trials in other working directories, so this
    # fails unless every path is made absolute where the space is read.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        space = load_space(ROOT / "spaces" / "smoke.yaml", ("storage.cache_dir=cache", *PINNED_SEARCH, CONSTRAINT))
        result = run_search(space, run_dir=Path("run"), echo=lines.append)
    return tmp / result.run_dir, lines


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_smoke_search_leaves_every_artifact(smoke_run):
    run_dir, lines = smoke_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["completed_trials"] + info["failed_trials"] == PINNED_TRIALS
    assert info["objectives"] == {"map50": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    assert len(info["space_sha256"]) == 64 and info["packages"]["tensorflow"] == "2.21.0"

    trials = read_csv(run_dir / "trials.csv")
    assert len(trials) == 1 + PINNED_TRIALS and trials[0]["trial_id"] == "baseline"  # the baseline, then the trials
    trials = trials[1:]
    assert {"param.resolution", "param.quantization", "map50", "size_bytes", "latency_ms", "sparsity", "time_fine_tune_s"} <= set(trials[0])
    completed = [t for t in trials if t["status"] == "completed"]
    assert completed, [t["error"] for t in trials]
    rungs = info["latency_reference"]["rungs"]
    # the space's resolutions x the reference modes of its quantization modes (float32, int8), and the anchor
    assert set(rungs) == {"float32@64", "float32@96", "int8@64", "int8@96", "int8@256"}
    for t in completed:
        assert int(t["param.resolution"]) in (64, 96)
        # timed against the reference built at its resolution, in its mode's reference mode
        assert t["latency_ref_resolution"] == t["param.resolution"]
        assert t["latency_ref_mode"] == t["param.quantization"]  # float32 and int8 are their own reference modes
        assert t["latency_ref_sha256"] == rungs[f"{t['param.quantization']}@{t['param.resolution']}"]["sha256"]
        # calibration_size is only there when the mode calibrates
        assert (t["param.calibration_size"] != "") == (t["param.quantization"] == "int8")
    records = json.loads((run_dir / "trials.json").read_text())["trials"]
    assert [r["trial_id"] for r in records] == [t["trial_id"] for t in trials]  # the CSV is a view of the record

    pareto = read_csv(run_dir / "pareto.csv")
    assert 1 <= len(pareto) <= len(completed)
    assert (run_dir / "report.html").stat().st_size > 10_000 and (run_dir / "report.png").exists()
    assert any(line.startswith("Pareto front") for line in lines)


def test_the_baseline_is_measured_like_a_trial_and_every_trial_is_judged_against_it(smoke_run):
    run_dir, lines = smoke_run
    data = json.loads((run_dir / "trials.json").read_text())
    baseline = data["baseline"]
    assert baseline["trial_id"] == "baseline" and baseline["status"] == "baseline"
    assert baseline["params"] == {"resolution": 64, "pruning_schedule": "none", "quantization": "float32"}
    assert {"map50", "map", "size_bytes", "latency_ms"} <= set(baseline["metrics"])
    assert read_csv(run_dir / "trials.csv")[0]["trial_id"] == "baseline"
    for r in data["trials"]:
        m = r["metrics"]
        assert m["map50_drop"] == pytest.approx((baseline["metrics"]["map50"] - m["map50"]) * 100, abs=1e-3)
        assert m["size_ratio"] == pytest.approx(m["size_bytes"] / baseline["metrics"]["size_bytes"])
        assert r["feasible"] == (m["size_bytes"] <= 10_000_000)
    assert any(line.startswith("baseline:") for line in lines)


def test_the_front_and_export_keep_to_the_constraints(smoke_run):
    run_dir, _ = smoke_run
    pareto = read_csv(run_dir / "pareto.csv")
    assert pareto and all(row["feasible"] == "True" for row in pareto)
    card = json.loads((run_dir / "export" / "model.json").read_text())
    assert card["chosen_by"]["feasible"] is True and card["chosen_by"]["constraints"] == {"max_size_bytes": 1e7}
    assert card["chosen_by"]["rule"] == "accuracy_budget" and card["chosen_by"]["why"]
    assert "map50_drop" in card["against_baseline"]


def test_the_run_says_how_good_the_search_was_and_keeps_its_study(smoke_run):
    from search.study import load_study

    run_dir, _ = smoke_run
    info = json.loads((run_dir / "run.json").read_text())
    history = read_csv(run_dir / "hypervolume.csv")
    assert [int(h["trials"]) for h in history] == list(range(1, PINNED_TRIALS + 1))
    assert float(history[-1]["hypervolume"]) == pytest.approx(info["hypervolume"]["value"])
    values = [float(h["hypervolume"]) for h in history]
    assert values == sorted(values)  # a front only ever grows
    study = load_study(run_dir)
    records = json.loads((run_dir / "trials.json").read_text())["trials"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == sum(r["status"] == "completed" for r in records)
    for t in done:  # every completed trial with its parameters (those the sampler chose) and values
        (record,) = [r for r in records if t.params.items() <= r["params"].items()]
        assert t.values == [record["metrics"][name] for name in ("map50", "size_bytes", "latency_ms")]
        assert t.constraints == {"max_size_bytes": record["metrics"]["size_bytes"] - 1e7}


def test_the_seeded_search_measures_what_it_measured_before_the_redesign(smoke_run):
    run_dir, _ = smoke_run
    records = json.loads((run_dir / "trials.json").read_text())["trials"]
    found = [{"params": r["params"], **{k: r["metrics"][k] for k in ("map50", "map", "size_bytes")}} for r in records]
    assert len(found) == PINNED_TRIALS
    pairs = [(now, *[p for p in PINNED if p["params"] == now["params"]]) for now in found]
    assert all(len(pair) == 2 for pair in pairs), found  # each one of the recorded trials
    assert all(now["size_bytes"] == before["size_bytes"] for now, before in pairs)
    if ISA not in PINNED_FILES:
        pytest.skip(f"no mAPs pinned for this CPU (neither AVX2 nor AVX-512 found in /proc/cpuinfo); proposals and sizes checked")
    for now, before in pairs:
        assert now["map50"] == pytest.approx(before["map50"], abs=1e-9)
        assert now["map"] == pytest.approx(before["map"], abs=1e-9)


def test_export_loads_and_runs_in_litert(smoke_run):
    from ai_edge_litert.interpreter import Interpreter

    run_dir, _ = smoke_run
    card = json.loads((run_dir / "export" / "model.json").read_text())
    assert card["trial_id"] in [row["trial_id"] for row in read_csv(run_dir / "pareto.csv")]
    assert card["space"]["sha256"] == json.loads((run_dir / "run.json").read_text())["space_sha256"]
    interpreter = Interpreter(model_path=str(run_dir / "export" / "model.tflite"))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape"]) == card["input"]["shape"]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).random(detail["shape"]).astype(detail["dtype"]))
    interpreter.invoke()
    assert len(interpreter.get_output_details()) == 2


def test_a_finished_run_is_never_overwritten(smoke_run):
    run_dir, _ = smoke_run
    before = (run_dir / "trials.csv").read_bytes()
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    with pytest.raises(RunDirError, match="exists already"):
        run_search(space, run_dir=run_dir, echo=lambda line: None)
    assert (run_dir / "trials.csv").read_bytes() == before
    assert json.loads((run_dir / "trials.json").read_text())["trials"]
