"""A whole search, in order: check everything, prepare inputs, search, report, export.

Every check a user's input can fail happens before the run directory is created and before Ray
starts, so bad input costs nothing and overwrites nothing.

A run whose driver was stopped (Ctrl-C, SIGTERM: Tune saves its state and the run is marked
``interrupted``) or killed (SIGKILL, a lost machine: ``running`` forever) is continued by
``resume_search(run_dir)``: the same space, the finished trials kept, the sampler's history
restored from Tune's saved searcher state, until the budget is spent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.errors import ClusterError, RunDirError, SpaceError
from search.files import unwritable_folder, write_text_atomic
from search.node_lock import node_guard, shared
from search.pareto import Front, compute_front
from search.provenance import machine, package_versions
from search.baseline import BASELINE_ID, BASELINE_MODE
from search.record import BASELINE, FAILED, TrialRecord, check_recordable, read_baseline, read_records, write_records
from search.space import Space
from search.timing.rungs import LatencyReferences
from search.trial import TrialContext


def default_run_dir(space: Space) -> Path:
    return Path("runs") / f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path) -> None:
    """A run directory must be new and creatable: a run is never overwritten."""
    if run_dir.exists():
        raise RunDirError(f"{run_dir}: exists already; a run is never overwritten (choose another --run-dir)")
    blocker = unwritable_folder(run_dir.resolve().parent)
    if blocker is not None:
        raise RunDirError(f"{run_dir}: cannot be created ({blocker} is not a writable folder)")


def check_storage(space: Space) -> None:
    """The storage must be writable (a folder that exists or can be made, or an object store that
    takes a probe object): every node writes its trials there."""
    if not space.storage_path:
        return
    from search import storage

    if storage.is_uri(space.storage_path):
        problem = storage.check_writable(space.storage_path)
        if problem:
            raise SpaceError(f"{space.path}: storage.path: must be an object store this machine can write to, but "
                             f"writing to {space.storage_path} failed ({problem})")
        return
    blocker = unwritable_folder(space.storage_path)
    if blocker is not None:
        raise SpaceError(f"{space.path}: storage.path: must be a writable folder every node mounts, but got "
                         f"{space.storage_path} ({blocker} is not a writable folder)")


def trial_storage(space: Space, run_dir: Path) -> tuple[str, str]:
    """(each trial's folder parent, the shared stage cache) for this run: folders or URIs. The one
    place that decides where stages live; the trials and the export read it from their context."""
    from search import storage

    if space.storage_path:
        return (storage.join(space.storage_path, "runs", run_dir.name, "trials"),
                storage.join(space.storage_path, "stages"))
    return str((run_dir / "trials").resolve()), str((Path(space.shared_dir) / "stages").resolve())


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


@dataclass(frozen=True)
class SearchResult:
    """What a finished search leaves, for the CLI's exit code and for callers."""

    run_dir: Path
    completed: int
    failed: int
    front: Front
    export_dir: Path | None


def run_search(space: Space, *, run_dir: Path | None = None, address: str | None = None, echo=print) -> SearchResult:
    """Run the search ``space`` describes; every check a user's input can fail comes first."""
    address = address or os.environ.get("RAY_ADDRESS")
    run_dir = Path(run_dir) if run_dir else default_run_dir(space)
    check_run_dir(run_dir)
    check_storage(space)
    check_address(address)
    check_recordable([n for n in space.metric_names if n in space.trial_measured_names], source=space.path)

    started = time.perf_counter()
    dataset = _load_data(space, echo)
    run_dir.mkdir(parents=True)
    artifacts, stages = trial_storage(space, run_dir)
    info: dict[str, Any] = {
        "status": "running", "started": _now(), "finished": None,
        "space": space.to_dict(), "space_file": str(Path(space.path).resolve()), "space_sha256": space.sha256,
        "overrides": list(space.overrides),
        "objectives": {o.name: o.direction for o in space.objectives},
        "data": {"source": dataset.source, "classes": list(dataset.names), "train_images": len(dataset.train.examples),
                 "val_images": len(dataset.val.examples), "preprocessing": space.data.preprocessing},
        "packages": package_versions(), "machine": machine(), "ray_address": address or "embedded",
        "storage": {"trials": str(artifacts), "stages": str(stages)}, "resumed": [],
    }
    write_run_json(run_dir, info)
    return _search(space, dataset, info, run_dir=run_dir, address=address, echo=echo, started=started)


def resume_search(run_dir: Path, *, address: str | None = None, echo=print) -> SearchResult:
    """Continue the search of a run whose driver stopped before its budget was spent."""
    from search.space import load_space

    address = address or os.environ.get("RAY_ADDRESS")
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as error:
        raise RunDirError(f"{run_dir}: not a run directory that can be resumed (no readable run.json: "
                          f"{getattr(error, 'strerror', None) or error})") from None
    finished = info.get("status") == "finished"
    if finished and not _missed_a_target(run_dir):
        raise RunDirError(f"{run_dir}: finished already ({info.get('completed_trials')} completed trials); "
                          "nothing to resume (start a new run to search more)")
    space = load_space(info["space_file"], tuple(info.get("overrides", ())))
    if space.sha256 != info["space_sha256"]:
        raise SpaceError(f"{info['space_file']}: changed since the run started (sha256 {space.sha256[:12]}, "
                         f"was {info['space_sha256'][:12]}); a resumed search must use the same space")
    check_address(address)

    started = time.perf_counter()
    dataset = _load_data(space, echo)
    echo(f"resume: {len(read_records(run_dir))} trials already finished in {run_dir}"
         + ("; the budget is spent: only the trials a device target missed are measured again" if finished else ""))
    info.update(status="running", ray_address=address or "embedded")
    info.setdefault("resumed", []).append(_now())
    write_run_json(run_dir, info)
    return _search(space, dataset, info, run_dir=run_dir, address=address, echo=echo, started=started,
                   search_more=not finished)


def _load_data(space: Space, echo):
    from search.inputs import load_data

    started = time.perf_counter()
    echo(f"data: {space.data.format} ...")
    dataset = load_data(space)
    echo(f"data: {len(dataset.train.examples)} train / {len(dataset.val.examples)} val images, "
         f"{dataset.num_classes} classes ({', '.join(dataset.names[:6])}{'...' if dataset.num_classes > 6 else ''}) "
         f"from {dataset.source} [{time.perf_counter() - started:.0f}s]")
    return dataset


def _base_model(space: Space, dataset, info: dict[str, Any], *, run_dir: Path, echo) -> dict[str, Any]:
    """The base model every trial starts from (trained or imported once, then cached)."""
    from search.inputs import base_model

    with shared():  # training computes: no trial of another search on this node measures meanwhile
        base = base_model(space, dataset)
    if base.cached:
        echo(f"base model: cached ({base.source}, key {base.key}), map50={base.map50:.3f} at {base.resolution}px")
    else:
        echo(f"base model: {base.source} in {base.seconds:.0f}s, map50={base.map50:.3f} map={base.map:.3f} at {base.resolution}px")
    info["base_model"] = asdict(base)
    write_run_json(run_dir, info)
    return info["base_model"]


def _run_trials(space: Space, context: TrialContext, *, artifacts: str, run_dir: Path, address: str | None,
                info: dict[str, Any], baseline: TrialRecord, echo, search_more: bool = True) -> tuple[float, TrialRecord]:
    """Start Ray, run (or continue) the trials to the budget, stop Ray; returns the search's seconds
    and the baseline (measured on the device targets too, once Ray is up). A resumed run first
    measures again, on the device targets they missed, the trials it has; ``search_more`` False
    (a finished run) stops there."""
    from search.tuner import TrialRecorder, can_resume_tuner, resume_tuner, run_tuner, start_ray, stop_ray

    echo(f"search: {space.budget.trials or 'unlimited'} trials, {space.budget.max_concurrent} at a time, "
         f"sampler {space.budget.sampler}, on {address or 'an embedded local Ray'}; trials in {artifacts}")
    started = time.perf_counter()
    try:
        start_ray(address)
        _check_every_node_sees(context, artifacts, run_dir=run_dir, info=info)
        baseline = _baseline_on_targets(space, context, baseline, run_dir=run_dir, echo=echo)
        _measure_missed_targets(space, context, baseline, artifacts=artifacts, run_dir=run_dir, echo=echo)
        if search_more:  # a finished run resumed only to measure again has all its trials
            with _sigterm_stops_like_ctrl_c():
                if can_resume_tuner(run_dir):
                    resume_tuner(context, artifacts_dir=artifacts, run_dir=run_dir)
                else:  # a new run, or one killed before Tune saved anything
                    recorder = TrialRecorder(run_dir, budget=space.budget.trials, baseline=baseline, echo=echo)
                    run_tuner(space, context, artifacts_dir=artifacts, run_dir=run_dir, recorder=recorder)
    finally:
        stop_ray()
    return time.perf_counter() - started + info.get("search_seconds", 0.0), baseline


def _targets_to_measure(record: TrialRecord, devices) -> list:
    """The device targets ``record`` still needs: every one before its first try, then those that
    left a reason instead of values (busy or gone)."""
    from search.objectives.targets import column
    from search.targets import unmeasured_targets

    if not record.completed or not devices:
        return []
    if column("error", devices[0].name) not in record.metrics:
        return list(devices)
    return unmeasured_targets(record.metrics, devices)


def _missed_a_target(run_dir: Path) -> bool:
    """Whether a finished trial (or the baseline) of the run has a device target's reason instead
    of its values (``error@<target>``): ``resume`` measures it there again."""
    from search.objectives.targets import split

    records = [*read_records(run_dir), read_baseline(run_dir)]
    return any(split(name)[0] == "error" and split(name)[1] and value
               for r in records if r is not None and r.completed for name, value in r.metrics.items())


def _on_targets(record: TrialRecord, space: Space, context: TrialContext, *, echo) -> TrialRecord:
    """``record`` with its model measured on the device targets it still needs."""
    from search import storage
    from search.targets import measure_on_targets

    devices = _targets_to_measure(record, space.measure.devices)
    if not devices:
        return record
    content = storage.read_bytes(record.model_path)
    if content is None:
        echo(f"  {record.trial_id}: its model {record.model_path} is gone from the storage; not measured")
        return record
    found = measure_on_targets(content, resolution=int(record.params["resolution"]),
                               mode=record.params["quantization"], measure=space.measure,
                               references=context.latency_reference, echo=echo, devices=devices)
    return replace(record, metrics={**record.metrics, **found})


def _baseline_on_targets(space: Space, context: TrialContext, baseline: TrialRecord, *, run_dir: Path,
                         echo) -> TrialRecord:
    """The baseline's model measured on every device target (it was measured before Ray started),
    so that each target's latency has a baseline too; a resumed run keeps what it measured and
    measures again only where a device missed it."""
    devices = _targets_to_measure(baseline, space.measure.devices)
    if not devices:
        return baseline
    echo(f"baseline: measuring on {', '.join(t.name for t in devices)} ...")
    baseline = _on_targets(baseline, space, context, echo=echo)
    write_records(run_dir, read_records(run_dir), baseline=baseline)
    return baseline


def _measure_missed_targets(space: Space, context: TrialContext, baseline: TrialRecord, *, artifacts: str,
                            run_dir: Path, echo) -> None:
    """Each finished trial that a device target missed (busy or gone when it finished) measured
    there again from its stored ``.tflite``, then judged again: with every objective it is
    feasible as its values say. Optuna keeps its FAIL for such a trial (a finished trial's state
    cannot change there); the record, the front and the export use the new values. Only a resumed
    run has such trials."""
    from search import storage
    from search.baseline import judge
    from search.tuner import RESULT, missing_is_infeasible

    records = read_records(run_dir)
    todo = [r for r in records if r.status != FAILED and _targets_to_measure(r, space.measure.devices)]
    if not todo:
        return
    echo(f"resume: {len(todo)} trials missed a device target; measuring them there again ...")
    again: dict[str, TrialRecord] = {}
    for count, record in enumerate(todo, 1):
        measured = _on_targets(record, space, context, echo=echo)
        judged = missing_is_infeasible(judge(measured, baseline=baseline.metrics or None,
                                             constraints=space.constraints), space)
        again[record.trial_id] = judged
        # After each trial, so a driver stopped meanwhile keeps what was measured.
        write_records(run_dir, [again.get(r.trial_id, r) for r in records], baseline=baseline)
        # Its result.json too: a trial Tune had not saved as finished is reported again from it.
        location = storage.join(artifacts, record.trial_id, RESULT)
        result = storage.read_bytes(location)
        if result is not None:
            storage.write_bytes(location, json.dumps({**json.loads(result), **{n: judged.metrics.get(n) for n in
                                space.metric_names}, "record": judged.to_dict()}, default=str).encode())
        missed = _targets_to_measure(judged, space.measure.devices)
        echo(f"  [{count}/{len(todo)}] {record.trial_id}: "
             + (f"still missing on {', '.join(t.name for t in missed)}" if missed else "measured on every target"))


def _search(space: Space, dataset, info: dict[str, Any], *, run_dir: Path, address: str | None, echo,
            started: float, search_more: bool = True) -> SearchResult:
    """Base model and baseline, then the search (new or resumed) to its budget, then report and export."""
    from search import storage
    from search.files import file_sha256

    base = _base_model(space, dataset, info, run_dir=run_dir, echo=echo)
    artifacts, stages = trial_storage(space, run_dir)
    storage.makedirs(artifacts)
    storage.makedirs(stages)
    context = TrialContext(space=space, dataset=dataset, base_weights=_shared_base_weights(space, base["weights"]),
                           stages_dir=stages, base_weights_sha256=file_sha256(base["weights"]),
                           latency_reference=_latency_reference(space, info, run_dir=run_dir, echo=echo))
    baseline = _measure_baseline(space, context, run_dir=run_dir, info=info, echo=echo)
    context = replace(context, baseline=baseline.metrics or None)
    info.setdefault("search_started_at", round(time.time(), 3))
    search_seconds, baseline = _run_trials(space, context, artifacts=artifacts, run_dir=run_dir, address=address,
                                           info=info, baseline=baseline, echo=echo, search_more=search_more)
    records = read_records(run_dir)  # the record on disk: this session's trials and earlier ones
    failed = sum(not r.completed for r in records)
    info.update(completed_trials=len(records) - failed, failed_trials=failed, search_seconds=round(search_seconds, 1))
    budget = space.budget
    if budget.trials is not None and len(records) < budget.trials and budget.time_budget_s is None:
        info.update(status="interrupted")
        write_run_json(run_dir, info)
        raise SearchInterrupted(f"{run_dir}: interrupted after {len(records)} of {budget.trials} trials; "
                                f"continue it with `python -m search resume {run_dir}`")
    front, exported = _report_and_export(space, context, records, baseline, run_dir=run_dir, base=base, info=info,
                                         echo=echo)
    info.update(status="finished", finished=_now(), total_seconds=round(time.perf_counter() - started, 1),
                pareto_trials=[r.trial_id for r in front.records], export_note=front.note,
                exported_trial=front.exported_record.trial_id if exported else None)
    write_run_json(run_dir, info)
    _print_summary(front, space, failed=failed, run_dir=run_dir, exported=exported, echo=echo, started=started)
    return SearchResult(run_dir, len(records) - failed, failed, front, exported)


def _latency_reference(space: Space, info: dict[str, Any], *, run_dir: Path, echo) -> LatencyReferences | None:
    """The latency reference's rungs (``search.timing.rungs``): one for every resolution the space
    can give a trial in every reference mode its quantization modes need, the baseline's and the
    anchor, built once here and shipped to every trial, so every node times the same bytes; None
    when the space measures no latency."""
    from search.objectives import measurements_for
    from search.timing.reference import RECIPE, recipe_text, reference_mode
    from search.timing.rungs import latency_references, rung_name

    if "latency" not in [m.name for m in measurements_for(space.trial_measured_names)] and not space.measure.devices:
        return None
    modes = {reference_mode(q) for q in space.search.quantization.values}
    wanted = [(r, m) for r in space.search.resolution.values for m in modes]
    wanted.append((space.base_training.resolution, reference_mode(BASELINE_MODE)))
    with shared():  # conversions: not while a trial of another search times on this node
        references = latency_references((r, m) for r, m in wanted if r)  # kept in the machine's temp folder
    rungs = references.describe()
    info["latency_reference"] = {"recipe": RECIPE, "what": recipe_text(), "anchor": rung_name(*references.anchor),
                                 "rungs": rungs}
    write_run_json(run_dir, info)
    echo(f"latency reference: {recipe_text()}; rungs " + ", ".join(
        f"{name} ({rung['bytes']:,} bytes, sha256 {rung['sha256'][:12]})" for name, rung in rungs.items()))
    return references


def _measure_baseline(space: Space, context: TrialContext, *, run_dir: Path, info: dict[str, Any], echo) -> TrialRecord:
    """The uncompressed model, measured once per run like a trial (``search.baseline``); a resumed
    run keeps the one it measured."""
    earlier = read_baseline(run_dir)
    if earlier is not None:
        return earlier
    from search.trial import MODEL_FILE, run_baseline

    out = run_dir / BASELINE_ID
    out.mkdir(exist_ok=True)
    resolution = space.base_training.resolution
    echo(f"baseline: the uncompressed base model, {BASELINE_MODE} at {resolution}px, measured like a trial ...")
    try:
        result = run_baseline(context, resolution=resolution, out_dir=out, guard=node_guard)
        record = replace(result.record(BASELINE_ID, host=os.uname().nodename, model_path=str(out / MODEL_FILE)),
                         status=BASELINE, finished_at=round(time.time(), 3))
    except Exception as error:  # the search still runs; its trials are then judged without a baseline
        record = TrialRecord(BASELINE_ID, FAILED, f"{type(error).__name__}: {error}".splitlines()[0][:500])
    write_records(run_dir, read_records(run_dir), baseline=record)
    info["baseline"] = {name: record.metrics.get(name) for name in space.measured_names}
    write_run_json(run_dir, info)
    echo(f"baseline: {record.describe()}")
    return record


def _hypervolume(space: Space, records, baseline: TrialRecord, info: dict[str, Any]) -> list[dict]:
    """The front's hypervolume after each trial (``search.hypervolume``), or none with why."""
    from search.hypervolume import REFERENCE_RATIO, history

    names, directions = space.metric_names, [o.direction for o in space.objectives]
    try:
        rows = history(records, names=names, directions=directions, baseline=baseline.metrics,
                       started_at=info.get("search_started_at") or time.time())
    except (ValueError, KeyError) as error:
        info["hypervolume"] = {"value": None, "why_none": f"{type(error).__name__}: {error}"}
        return []
    info["hypervolume"] = {
        "value": rows[-1]["hypervolume"] if rows else 0.0, "objectives": names,
        "normalised": "accuracy: 1 - value/baseline (reference 1); size, latency, counts: value/baseline "
                      f"(reference {REFERENCE_RATIO:g}); Optuna's compute_hypervolume",
    }
    return rows


def _report_and_export(space: Space, context: TrialContext, records, baseline: TrialRecord, *, run_dir: Path,
                       base: dict[str, Any], info: dict[str, Any], echo):
    from search.export import export_trial, set_aside_export
    from search.report import write_report
    from search.study import load_study

    with shared():  # the driver's own heavy moments stay out of trials' latency measurements on this node
        measured = baseline if baseline.completed else None
        front = compute_front(records, objectives=space.objectives, export=space.export, baseline=measured,
                              prefer=space.export_prefers)
        history = _hypervolume(space, records, baseline, info)
        write_text_atomic(run_dir / "hypervolume.csv", _csv(history, ("trials", "seconds", "hypervolume", "trial_id")))
        write_report(front, space, run_dir, history=history, study=load_study(run_dir))
        exported = None
        if front.exported_record is not None:
            aside = set_aside_export(run_dir)  # only a finished run resumed to measure again has one
            if aside is not None:
                echo(f"export: the earlier export is kept as {aside}")
            exported = export_trial(front.exported_record, context, run_dir, base=base, why=front.note, echo=echo)
    return front, exported


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _print_summary(front: Front, space: Space, *, failed: int, run_dir: Path, exported: Path | None, echo, started: float):
    from search.report import summary_table

    echo("")
    echo(f"Pareto front ({len(front.members)} of {len(front.completed)} completed trials; {failed} failed):")
    echo(summary_table(front, space) if front.members else "  (no completed trial)")
    if exported:
        echo(f"exported (*, rule {space.export.rule}: {front.note}): {exported / 'model.tflite'} with {exported / 'model.json'}")
    echo(f"report: {run_dir / 'report.html'}  trials: {run_dir / 'trials.csv'}  [{time.perf_counter() - started:.0f}s]")


def _shared_base_weights(space: Space, weights: str) -> str:
    """Where trials read the base weights: the file itself when the storage is a folder (it is
    under storage.path, or this is one machine); a copy in the object store when it is one."""
    from search import storage

    if not space.storage_path or not storage.is_uri(space.storage_path):
        return weights
    location = storage.join(space.storage_path, "base", Path(weights).name)  # named by its content key
    if not storage.exists(location):
        storage.upload(Path(weights), location)
    return location


def _check_every_node_sees(context: TrialContext, artifacts: str, *, run_dir: Path, info: dict[str, Any]) -> None:
    """Fail before any trial runs when a node cannot read what trials read (a cluster without shared storage)."""
    from search.tuner import unreadable_on_nodes

    dataset = context.dataset
    images = [str(split.examples[i].image_path) for split in (dataset.train, dataset.val) for i in (0, -1)]
    cfg = [context.space.model.cfg] if context.space.model.cfg else []  # every trial builds its network from it
    problems = unreadable_on_nodes([context.base_weights, artifacts, context.stages_dir, *images, *cfg])
    if problems:
        node, path = problems[0]
        message = (f"node {node} cannot read {path}: trials run on every node, so the data, the base weights "
                   f"and the storage must be at the same path on all of them (--storage DIR on a shared folder, "
                   f"data.path on it too){f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}")
        info.update(status="failed", error=message, finished=_now())
        write_run_json(run_dir, info)
        raise ClusterError(message)


class SearchInterrupted(Exception):
    """The driver was stopped before the budget was spent; the run can be resumed."""


@contextmanager
def _sigterm_stops_like_ctrl_c():
    """SIGTERM is turned into SIGINT, which Tune handles by saving its state and returning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
