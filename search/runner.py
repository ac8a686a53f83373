"""A whole search, in order: check everything, prepare inputs, search, report, export.

Every check a user's input can fail happens before the run directory is created and before Ray
starts, so bad input costs nothing and overwrites nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.atomic import write_text_atomic
from search.errors import ClusterError, RunDirError
from search.provenance import machine, package_versions
from search.space import Space


def default_run_dir(space: Space) -> Path:
    return Path("runs") / f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path) -> None:
    """A run directory must be new and creatable: a run is never overwritten."""
    if run_dir.exists():
        raise RunDirError(f"{run_dir}: exists already; a run is never overwritten (choose another --run-dir)")
    parent = run_dir.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"{run_dir}: cannot be created ({existing} is not a writable folder)")


def check_address(address: str | None) -> None:
    """Fail fast, before anything runs, when a Ray address names no reachable Ray head."""
    if not address or address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r}: must be HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise ClusterError(f"--address {address}: no Ray head answers there ({error.strerror or error}); start one with `ray start --head` or `ray up cluster.yaml`") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_run_json(run_dir: Path, info: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "run.json", json.dumps(info, indent=2, default=str))


def run_search(space: Space, *, run_dir: Path | None = None, address: str | None = None, echo=print) -> Path:
    """Run the search ``space`` describes; returns the run directory."""
    address = address or os.environ.get("RAY_ADDRESS")
    run_dir = Path(run_dir) if run_dir else default_run_dir(space)
    check_run_dir(run_dir)
    check_address(address)

    from search.inputs import base_model, load_data

    started = time.perf_counter()
    echo(f"data: {space.data.format} ...")
    dataset = load_data(space)
    echo(f"data: {len(dataset.train.examples)} train / {len(dataset.val.examples)} val images, "
         f"{dataset.num_classes} classes ({', '.join(dataset.names[:6])}{'...' if dataset.num_classes > 6 else ''}) "
         f"from {dataset.source} [{time.perf_counter() - started:.0f}s]")

    run_dir.mkdir(parents=True)
    info: dict[str, Any] = {
        "status": "running", "started": _now(), "finished": None,
        "space": space.to_dict(), "space_file": space.path, "space_sha256": space.sha256,
        "objectives": {o.name: o.direction for o in space.objectives},
        "data": {"source": dataset.source, "classes": list(dataset.names), "train_images": len(dataset.train.examples),
                 "val_images": len(dataset.val.examples), "preprocessing": space.data.preprocessing},
        "packages": package_versions(), "machine": machine(), "ray_address": address or "embedded",
    }
    write_run_json(run_dir, info)

    base = base_model(space, dataset)
    base_info = asdict(base)
    if base.cached:
        echo(f"base model: cached ({base.source}, key {base.key}), map50={base.map50:.3f} at {base.resolution}px")
    else:
        echo(f"base model: {base.source} in {base.seconds:.0f}s, map50={base.map50:.3f} map={base.map:.3f} at {base.resolution}px")
    info["base_model"] = base_info
    write_run_json(run_dir, info)

    from search.record import TrialRecorder
    from search.report import compute_front, summary_table, write_report
    from search.trial import TrialContext
    from search.tuner import run_tuner, start_ray, stop_ray

    artifacts = (run_dir / "trials").resolve()
    artifacts.mkdir()
    context = TrialContext(space=space, dataset=dataset, base_weights=base.weights, artifacts_dir=str(artifacts))
    recorder = TrialRecorder(run_dir, artifacts_dir=artifacts, budget=space.budget.trials, echo=echo)
    echo(f"search: {space.budget.trials or 'unlimited'} trials, {space.budget.max_concurrent} at a time, "
         f"sampler {space.budget.sampler}, on {address or 'an embedded local Ray'}")
    search_started = time.perf_counter()
    try:
        start_ray(address)
        run_tuner(space, context, run_dir=run_dir, recorder=recorder)
    finally:
        stop_ray()
    search_seconds = time.perf_counter() - search_started

    front = compute_front(recorder.rows, space)
    write_report(front, space, run_dir)
    exported = None
    if front.exported is not None:
        from search.export import export_trial

        row = front.completed[front.exported]
        exported = export_trial(row, space, run_dir, names=list(dataset.names), base=base_info, data_source=dataset.source)

    failed = sum(r["status"] == "failed" for r in recorder.rows)
    info.update(status="finished", finished=_now(), completed_trials=len(recorder.rows) - failed, failed_trials=failed,
                search_seconds=round(search_seconds, 1), total_seconds=round(time.perf_counter() - started, 1),
                pareto_trials=[r["trial_id"] for r in front.rows],
                exported_trial=front.completed[front.exported]["trial_id"] if exported else None)
    write_run_json(run_dir, info)

    echo("")
    echo(f"Pareto front ({len(front.members)} of {len(front.completed)} completed trials; {failed} failed):")
    echo(summary_table(front) if front.members else "  (no completed trial)")
    if exported:
        echo(f"exported (*, rule {space.export.rule}): {exported / 'model.tflite'} with {exported / 'model.json'}")
    echo(f"report: {run_dir / 'report.html'}  trials: {run_dir / 'trials.csv'}  [{time.perf_counter() - started:.0f}s]")
    return run_dir
