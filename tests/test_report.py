"""The report of a search: its data from a front built by hand, and the page in a real browser.

The browser is Debian's ``chromium`` (``make setup`` installs it when it runs as root); where it is
missing the browser tests skip with the reason. It runs with every host name unresolvable and a
dead proxy, so a page that needed the network (a CDN's plotly.js) would draw nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

from search.pareto import Front
from search.record import TrialRecord
from search.report import BASE_MARK, EXPORTED_MARK, render_html, report_data, summary_table, write_report
from search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ("constraints.max_size_bytes=20000000", "constraints.max_map50_drop=15")
BASELINE = {"map50": 0.60, "map": 0.30, "size_bytes": 24_000_000, "latency_ms": 10.0}


def _record(trial_id: str, params: dict, map50: float, size: float, latency: float, *, feasible: bool | None) -> TrialRecord:
    metrics = {"map50": map50, "map": map50 / 2, "size_bytes": size, "latency_ms": latency,
               "map50_drop": round((BASELINE["map50"] - map50) * 100, 4), "map_drop": round((BASELINE["map"] - map50 / 2) * 100, 4),
               "size_ratio": size / BASELINE["size_bytes"], "latency_ratio": latency / BASELINE["latency_ms"]}
    return TrialRecord(trial_id, "completed", params=params, metrics=metrics, sparsity=0.0, feasible=feasible)


def _params(resolution: int, quantization: str, schedule: str = "none") -> dict:
    return {"resolution": resolution, "pruning_schedule": schedule, "quantization": quantization}


@pytest.fixture(scope="module")
def space():
    return load_space(ROOT / "spaces" / "smoke.yaml", CONSTRAINTS)


@pytest.fixture(scope="module")
def front() -> Front:
    """Two front trials, one exported; one breaking max_size_bytes; one dominated; the baseline."""
    baseline = TrialRecord("baseline", "baseline", params=_params(64, "float32"), sparsity=0.0, feasible=False,
                           metrics={**BASELINE, "map50_drop": 0.0, "map_drop": 0.0, "size_ratio": 1.0, "latency_ratio": 1.0})
    completed = (
        _record("aaaa1111", _params(96, "int8"), 0.59, 6_100_000, 4.0, feasible=True),
        _record("bbbb2222", _params(64, "int8"), 0.50, 6_000_000, 2.5, feasible=True),
        _record("cccc3333", _params(96, "float32"), 0.62, 24_200_000, 14.0, feasible=False),
        _record("dddd4444", {**_params(64, "int8", "polynomial_decay"), "target_sparsity": 0.5}, 0.40, 6_200_000, 3.0,
                feasible=True),
    )
    return Front(completed, members=(0, 1), exported=1, baseline=baseline,
                 note="within 15 points of the baseline's map50 0.600, the fastest")


@pytest.fixture(scope="module")
def study(space):
    """A small in-memory study over the smoke space, its values made up from the parameters."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[o.direction for o in space.objectives],
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        space.suggest(trial)
        resolution, quantization = trial.params["resolution"], trial.params["quantization"]
        shrink = 4.0 if quantization == "int8" else 1.0
        return resolution / 160 - 0.1 * (shrink > 1), 24e6 / shrink * (resolution / 64) ** 0.1, resolution**2 / 1000

    study.optimize(objective, n_trials=10)
    return study


HISTORY = ({"trials": 1, "seconds": 40.0, "hypervolume": 0.12}, {"trials": 2, "seconds": 75.0, "hypervolume": 0.31},
           {"trials": 4, "seconds": 140.0, "hypervolume": 0.35})


# --- the data, without a browser ------------------------------------------------------------------


def test_report_data_marks_every_kind_of_trial_and_draws_the_constraints(front, space, study):
    data = report_data(front, space, history=HISTORY, study=study)
    assert [p.x_label for p in data.panels] == ["size_bytes (MB)", "latency_ms (ms)"]
    size, latency = data.panels
    ids = {s.role: s.ids for s in size.series}
    assert ids == {"trial": ("dddd4444",), "infeasible": ("cccc3333",), "front": ("aaaa1111", "bbbb2222"),
                   "baseline": ("baseline",), "exported": ("bbbb2222",)}
    exported = next(s for s in size.series if s.role == "exported")
    assert exported.x == (6.0,) and exported.y == (0.50,)
    assert "resolution = 64" in exported.hover[0] and "map50_drop = 10.00" in exported.hover[0]
    # max_size_bytes on the size axis in MB; max_map50_drop as the accuracy 15 points under the baseline's
    assert [(lim.axis, round(lim.value, 6)) for lim in size.limits] == [("x", 20.0), ("y", 0.45)]
    assert [(lim.axis, round(lim.value, 6)) for lim in latency.limits] == [("y", 0.45)]
    assert any("15 points" in fact for fact in data.facts) and any("0.35" in fact for fact in data.facts)
    assert set(data.importances) == {"map50", "size_bytes", "latency_ms"} and "10 completed trials" in data.importance_note
    for values in data.importances.values():
        assert sum(values.values()) == pytest.approx(1.0)


def test_front_table_has_the_baseline_first_and_the_comparisons(front, space):
    data = report_data(front, space)
    header, rows = data.table_header, data.table_rows
    assert {"map50_drop", "size_ratio", "latency_ratio"} <= set(header) and "map_drop" not in header  # map is no objective
    assert [(r[0], r[1]) for r in rows] == [(BASE_MARK, "baseline"), ("", "aaaa1111"), (EXPORTED_MARK, "bbbb2222")]
    exported = dict(zip(header, rows[2]))
    assert (exported["map50_drop"], exported["size_ratio"], exported["latency_ratio"]) == ("10.00", "0.25x", "0.25x")
    lines = summary_table(front, space).splitlines()
    assert lines[0].split()[:2] == ["trial_id", "resolution"] and "map50_drop" in lines[0]
    assert lines[1].split()[:2] == [BASE_MARK, "baseline"] and lines[3].split()[:2] == [EXPORTED_MARK, "bbbb2222"]


def test_importances_are_left_out_with_a_sentence_when_they_cannot_be_computed(front, space):
    assert "No Optuna study" in report_data(front, space).importance_note
    one = optuna.create_study(directions=[o.direction for o in space.objectives])
    one.add_trial(optuna.trial.create_trial(params={"resolution": 64},
                                            distributions={"resolution": optuna.distributions.CategoricalDistribution([64, 96])},
                                            values=[0.5, 6e6, 2.0]))
    data = report_data(front, space, study=one)
    assert data.importances == {} and "at least 2 completed trials" in data.importance_note


# --- the page, in a real browser -----------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (the Makefile's set-up installs it with apt when run as "
                    "root), so the report is not opened in a browser")
    return path


def _browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, offline (no name resolves, the proxy is dead), on ``page``."""
    command = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
               "--virtual-time-budget=15000", *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, front, space, study) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    write_report(front, space, run_dir, history=HISTORY, study=study)
    return run_dir


def test_report_renders_its_plots_in_a_browser_with_no_script_error(run_dir, tmp_path):
    page = (run_dir / "report.html").read_text()
    assert "<script src" not in page  # plotly's JavaScript is inlined: the page works offline
    assert (run_dir / "report.png").stat().st_size > 10_000 and (run_dir / "pareto.csv").read_text().count("\n") == 3
    dom = _browse(run_dir / "report.html", tmp_path / "profile", "--dump-dom").stdout
    errors = re.search(r'data-js-errors="([^"]*)"', dom)
    assert errors is None, errors.group(1)
    for plot in ("front-plot", "hypervolume-plot", "importance-plot"):
        tag = re.search(rf'<div id="{plot}"[^>]*>', dom)
        assert tag is not None and "js-plotly-plot" in tag.group(0), plot  # plotly drew into it
    assert dom.count('class="main-svg"') >= 6  # two svg layers per drawn plot
    assert dom.count('class="point"') >= 2 * 6  # at least the markers of both front panels (6 each)
    table = dom[dom.index("id=\"front-table\""):]
    assert "bbbb2222" in table and "baseline" in table
    screenshot = tmp_path / "report.png"
    _browse(run_dir / "report.html", tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1400,2200")
    assert screenshot.stat().st_size > 50_000


def test_a_script_error_in_the_page_is_recorded_where_the_test_reads_it(front, space, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(render_html(report_data(front, space)).replace("</body>", "<script>noSuchFunction();</script></body>"))
    dom = _browse(page, tmp_path / "profile", "--dump-dom").stdout
    assert "noSuchFunction is not defined" in dom
