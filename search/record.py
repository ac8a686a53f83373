"""The record of a search: one typed ``TrialRecord`` per finished trial, kept on disk as it runs.

``trials.json`` is the machine record (every record whole, as ``TrialRecord.to_dict``);
``trials.csv`` is a view of it for people and spreadsheets: one row per trial, parameters as
``param.<name>``, then one column per value and detail the measurements can write
(``search.objectives.recorded_columns``), then how the trial was made and where. Both are
rewritten atomically after every trial, so a killed driver leaves every finished trial on disk.

The Ray Tune callback that keeps them is ``search.tuner.TrialRecorder``: this module knows
nothing of Ray, so the report and the export read records without importing it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search.baseline import COMPARISONS
from search.files import write_text_atomic
from search.objectives import OBJECTIVES, recorded_columns, unrecordable
from search.errors import SpaceError
from search.params import TrialParams

COMPLETED, FAILED = "completed", "failed"
BASELINE = "baseline"  # the status of the baseline's record (search.baseline): measured, not searched
RECORDS = "trials.json"
TABLE = "trials.csv"
PARAMS = TrialParams.names()
STAGES = ("build", "fine_tune", "qat", "convert")  # the pipeline's steps before the measurements


@dataclass(frozen=True)
class TrialRecord:
    """Everything known about one finished trial."""

    trial_id: str
    status: str  # COMPLETED or FAILED
    error: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # as proposed; a parameter that had no effect is absent
    metrics: dict[str, Any] = field(default_factory=dict)  # every value and detail the measurements returned
    sparsity: float | None = None  # measured on the converted model's source weights
    audit: str = ""  # the conversion audit's summary line
    float_layers: tuple[str, ...] = ()  # ops kept in float (selective modes)
    calibration_s: float | None = None
    stage_cache: str = ""  # "hit" or "miss": whether the prune + fine-tune stage was reused
    stage_wait_s: float | None = None  # of the fine-tune time, waiting for another trial computing it
    stage_key: str = ""  # its key in the stage cache (the export's error report rebuilds from it)
    lock_wait_s: float | None = None  # waiting for the node to be ours before timing (not a stage)
    seconds: dict[str, float] = field(default_factory=dict)  # per pipeline stage and measurement
    node: str = ""  # Ray's node id (nodes on one machine share a host name)
    host: str = ""
    model_path: str = ""  # the trial's .tflite: a path or an object-store URI
    feasible: bool | None = None  # meets the space's constraints (None: the space has none)
    finished_at: float | None = None  # epoch seconds when the driver recorded it

    @property
    def completed(self) -> bool:
        """Measured: a finished trial, or the baseline."""
        return self.status in (COMPLETED, BASELINE)

    def value(self, name: str) -> float:
        """The metric as a number; NaN when it is missing (a device target that did not answer):
        such a trial is infeasible (``search.tuner``), so it never reaches a front."""
        value = self.metrics.get(name)
        return math.nan if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "float_layers": list(self.float_layers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        names = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in names}
        return cls(**{**values, "float_layers": tuple(values.get("float_layers") or ())})

    def total_seconds(self) -> float | None:
        """The pipeline's own time, not Tune's (the actor's, which a resumed trial resets)."""
        return round(sum(self.seconds.values()), 3) if self.seconds else None

    def describe(self) -> str:
        """One line for the progress output."""
        if not self.completed:
            return f"FAILED: {self.error}"
        parts = [f"{name}={_short(name, self.metrics[name])}" for name in ("map50", "size_bytes", "latency_ms")
                 if name in self.metrics]
        return " ".join([*parts, f"sparsity={self.sparsity or 0:.2f}"])


def _short(name: str, value: Any) -> str:
    if name.startswith("size"):
        return f"{float(value) / 1e6:.2f} MB"
    if name.startswith("latency"):
        return f"{float(value):.1f} ms"
    return f"{float(value):.3f}"


def check_recordable(objective_names: Sequence[str], *, source: str) -> None:
    """Refuse, before anything runs, an objective no measurement declares (it could not be recorded)."""
    missing = unrecordable(objective_names)
    if missing:
        name = missing[0]
        raise SpaceError(f"{source}: objectives: {name} cannot be recorded: its measurement "
                         f"'{OBJECTIVES[name].measurement.name}' yields {list(OBJECTIVES[name].measurement.values)}, "
                         f"but not {name!r}")


# --- the table view ------------------------------------------------------------------------------

MEASURED = (*recorded_columns(), *COMPARISONS)
MADE = ("sparsity", "audit", "float_layers", "calibration_s", "stage_cache", "stage_wait_s", "stage_key", "lock_wait_s",
        "feasible")


def time_columns() -> tuple[str, ...]:
    from search.objectives import measurements_for

    steps = (*STAGES, *(m.name for m in measurements_for(OBJECTIVES)))
    return (*(f"time_{step}_s" for step in steps), "time_total_s")


COLUMNS = ("trial_id", "status", "error", *(f"param.{p}" for p in PARAMS), *MEASURED, *MADE, *time_columns(),
           "node", "host", "model_path", "finished_at")


def target_columns(records: Sequence[TrialRecord]) -> tuple[str, ...]:
    """The columns of the device targets the records were measured on (``latency_ms@rpi5``, ...),
    target by target: a space's targets are its own, so they are not among ``COLUMNS``."""
    from search.objectives.targets import split
    from search.objectives.targets import target_columns as columns_of

    targets = dict.fromkeys(split(name)[1] for r in records for name in r.metrics if split(name)[1])
    return tuple(c for target in targets for c in columns_of(target))


def columns_for(records: Sequence[TrialRecord]) -> tuple[str, ...]:
    """``COLUMNS`` with the records' device-target columns after the measured ones."""
    at = COLUMNS.index(MADE[0])
    return (*COLUMNS[:at], *target_columns(records), *COLUMNS[at:])


def csv_row(record: TrialRecord, targets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The record as one flat row of ``trials.csv`` (missing values are empty cells); ``targets``:
    the device-target columns of the table (``target_columns``)."""
    row: dict[str, Any] = {"trial_id": record.trial_id, "status": record.status, "error": record.error}
    row.update({f"param.{p}": record.params.get(p) for p in PARAMS})
    row.update({c: record.metrics.get(c) for c in (*MEASURED, *targets)})
    data = record.to_dict()
    row.update({c: data[c] for c in MADE})
    row["float_layers"] = ";".join(record.float_layers)
    row.update({f"time_{step}_s": s for step, s in record.seconds.items()})
    row.update(time_total_s=record.total_seconds(), node=record.node, host=record.host, model_path=record.model_path,
               finished_at=record.finished_at)
    return {k: ("" if v is None else v) for k, v in row.items()}


def records_to_csv(records: Sequence[TrialRecord]) -> str:
    buffer = io.StringIO()
    targets = target_columns(records)
    writer = csv.DictWriter(buffer, fieldnames=columns_for(records))  # a column nobody declared is an error, not dropped
    writer.writeheader()
    writer.writerows(csv_row(r, targets) for r in records)
    return buffer.getvalue()


def write_records(run_dir: Path, records: Sequence[TrialRecord], *, baseline: TrialRecord | None = None) -> None:
    """``trials.json`` (the record) and ``trials.csv`` (its view, the baseline as its first row),
    each replaced atomically."""
    data = {"baseline": baseline.to_dict() if baseline else None, "trials": [r.to_dict() for r in records]}
    write_text_atomic(Path(run_dir) / RECORDS, json.dumps(data, indent=1, default=str))
    write_text_atomic(Path(run_dir) / TABLE, records_to_csv([*([baseline] if baseline else []), *records]))


def read_records(run_dir: Path) -> list[TrialRecord]:
    """The trials of a run (none when it has not finished a trial yet); the baseline is apart."""
    try:
        data = json.loads((Path(run_dir) / RECORDS).read_text())
    except FileNotFoundError:
        return []
    return [TrialRecord.from_dict(d) for d in data["trials"]]


def read_baseline(run_dir: Path) -> TrialRecord | None:
    """The run's baseline record, when it was measured."""
    try:
        data = json.loads((Path(run_dir) / RECORDS).read_text()).get("baseline")
    except FileNotFoundError:
        return None
    return TrialRecord.from_dict(data) if data else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``trials.csv`` as strings (for people's scripts and tests; the code reads records)."""
    try:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
