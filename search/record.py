"""The record of a search: one row per finished trial, kept on disk as the search runs.

``TrialRecorder`` is a Ray Tune callback. Each time a trial completes or fails it adds the row
(parameters as ``param.<name>``, every measured metric, achieved sparsity, audit, stage timings,
or the error) and rewrites ``trials.csv`` atomically, so a killed driver leaves every finished
trial on disk. It also prints one progress line per trial.

A trial's own error arrives as a result with an ``error`` field (see ``search.tuner``); a trial
that died of an infrastructure failure after its retries arrives through ``on_trial_error``. A
resumed search starts from the rows already in ``trials.csv``, and a trial reported twice (it
finished just before the driver died) keeps one row.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from ray import tune

from search.atomic import write_text_atomic
from search.trial import TrialParams

PARAMS = tuple(f"param.{name}" for name in TrialParams.__dataclass_fields__)
METRICS = ("map50", "map", "size_bytes", "size_gzip_bytes", "latency_ms", "latency_p90_ms", "latency_spread", "latency_median_all_ms",
           "latency_runs", "latency_threads", "latency_cpus", "latency_lock_wait_s", "macs", "sparsity", "audit", "float_layers", "calibration_s")
TIMINGS = ("time_build_s", "time_fine_tune_s", "time_qat_s", "time_convert_s", "time_evaluate_s",
           "time_latency_s", "time_total_s")
# stage_cache: whether the prune + fine-tune stage was computed ("miss") or reused ("hit");
# stage_wait_s: of time_fine_tune_s, the time spent waiting for another trial computing it;
# stage_key: its folder under the stage cache (the export's error report rebuilds the model from it).
STAGE = ("stage_cache", "stage_wait_s", "stage_key")
PLACE = ("node", "host", "cpu_model")  # node: Ray's node id (nodes on one machine share a host name)
COLUMNS = ("trial_id", "status", "error", *PARAMS, *METRICS, *STAGE, *TIMINGS, *PLACE, "model_path")


def row_for(trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"trial_id": trial_id, "status": "failed" if error else "completed", "error": error or ""}
    for name in TrialParams.__dataclass_fields__:
        row[f"param.{name}"] = config.get(name, "")
    result = result or {}
    for key in (*METRICS, *STAGE, *TIMINGS[:-1], *PLACE, "model_path"):
        value = result.get(key)
        row[key] = "" if value is None else value
    # The pipeline's own time, not Tune's `time_total_s` (the actor's, which a resumed trial resets).
    stages = [float(result[t]) for t in TIMINGS[:-1] if result.get(t) is not None]  # a mode has the stages it needs
    row["time_total_s"] = round(sum(stages), 3) if stages else ""
    return row


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``trials.csv`` (none when it does not exist yet)."""
    try:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def describe_metrics(row: dict[str, Any]) -> str:
    size = float(row["size_bytes"]) / 1e6
    return f"map50={float(row['map50']):.3f} size={size:.2f} MB latency={float(row['latency_ms']):.1f} ms sparsity={float(row['sparsity']):.2f}"


class TrialRecorder(tune.Callback):
    """Collects finished trials into ``rows`` and keeps ``<run_dir>/trials.csv`` current."""

    def __init__(self, run_dir: Path, *, budget: int | None, echo=print):
        self.run_dir = Path(run_dir)
        self.budget = budget
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}

    def setup(self, **info):
        # A resumed search continues the record it left on disk.
        self.rows = read_rows(self.run_dir / "trials.csv")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.monotonic()
        self.echo(f"  started  {trial.trial_id}: {TrialParams.from_config(trial.config).describe()}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.echo(f"  retrying {trial.trial_id}: its worker process or node was lost (failure {trial.num_failures})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._finish(trial, result=result, error=result.get("error") or None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, result=None, error=self._error_of(trial))

    @staticmethod
    def _error_of(trial) -> str:
        # Died outside the pipeline (a killed worker or node): Ray's own message, its last line.
        message = str(getattr(trial, "error_msg", "") or "trial process failed")
        return message.strip().splitlines()[-1][:500]

    def _finish(self, trial, *, result: dict[str, Any] | None, error: str | None) -> None:
        row = row_for(trial.trial_id, trial.config, result, error)
        self.rows = [r for r in self.rows if r["trial_id"] != trial.trial_id] + [row]
        write_text_atomic(self.run_dir / "trials.csv", rows_to_csv(self.rows))
        seconds = time.monotonic() - self._started.get(trial.trial_id, time.monotonic())
        count = f"{len(self.rows)}/{self.budget}" if self.budget else str(len(self.rows))
        outcome = f"FAILED: {error}" if error else describe_metrics(row)
        self.echo(f"[{count:>7}] {trial.trial_id} in {seconds:4.0f}s | {TrialParams.from_config(trial.config).describe()} | {outcome}")
