"""Ray Tune + Optuna around ``run_trial``: the sampler, the trainable, the recorder, the run.

Two kinds of failure, kept apart:

- A trial's own error (a conversion its audit rejects, a diverged fine-tune) is data. The
  trainable catches it and reports it as a result with an ``error`` field; ``OptunaSearchWithFailures``
  tells Optuna FAIL for such a result, and the recorder writes the row with the error. Ray never
  retries it: the same settings would fail the same way.
- An infrastructure failure (a worker process or node that died) reaches Tune as a trial error and
  is retried ``budget.max_retries`` times (``FailureConfig``), on any node with a free CPU; only
  when the retries are spent is the trial recorded as failed (Optuna FAIL, Ray's message).

Every finished trial leaves ``<artifacts>/<trial_id>/result.json``. Tune's experiment state is
checkpointed every ``CHECKPOINT_PERIOD_S``, so a killed driver loses at most the last moments; a
trial that had finished in that window is found by its ``result.json`` when the search is resumed
and reported again without being recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search import storage
from search.baseline import judge, violations
from search.node_lock import node_guard, shared
from search.params import TrialParams
from search.record import FAILED, TrialRecord, read_records, write_records
from search.samplers import SAMPLERS
from search.space import Space
from search.spec import choose
from search.study import journal_storage

# What every Ray worker needs in its environment before it imports TensorFlow.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
# Ray Tune's newer console output ignores verbose=0 for its start banner; the legacy one honours it.
# The recorder prints one line per trial instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune's default ("auto") saves its experiment state every 10+ s; a trial takes far longer than a
# save (a few ms for the Optuna study), so save at every controller step that is 1 s after the last.
CHECKPOINT_PERIOD_S = "1"
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
RESULT = "result.json"  # a trial's own record, next to its .tflite
TUNE_DIR = "tune"  # Tune's experiment state (and the saved sampler), inside the run directory


# The result's [[constraint key, violation], ...] (<= 0 feasible; search.baseline): pairs, not a
# dict, because Tune flattens nested dicts in the results it hands a searcher.
CONSTRAINTS = "constraints"
MISSING = "missing"  # the result's objectives without a value (a device target that did not answer)


def make_sampler(space: Space):
    """The Optuna sampler the space names (``search.samplers.SAMPLERS``), seeded."""
    return choose(SAMPLERS, space.budget.sampler, what="budget.sampler").make(space.budget)


class OptunaSearchWithFailures(OptunaSearch):
    """``OptunaSearch`` that tells Optuna FAIL for a result carrying the trial's own ``error``.

    Proposing and learning (TPE's model fit) hold the node lock shared: they are the driver's CPU
    work, and must not land in the middle of a trial's latency measurement on this node.
    """

    def suggest(self, trial_id: str):
        with shared():
            return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        with shared():
            if result and (result.get("error") or result.get(MISSING)):
                return super().on_trial_complete(trial_id, None, error=True)
            if result and result.get(CONSTRAINTS) and trial_id in self._ot_trials:
                # Before `tell`: samplers that learn feasibility (TPE, NSGA-II) read it from the trial.
                for key, violation in result[CONSTRAINTS]:
                    self._ot_trials[trial_id].set_constraint(key, violation)
            return super().on_trial_complete(trial_id, result, error)


def trial_folder(artifacts_dir: str, trial_id: str) -> tuple[str, Path]:
    """(where the trial's files end up, where the pipeline writes them on this node): the same
    folder on a shared mount; on an object store, a node-local scratch folder uploaded afterwards."""
    location = storage.join(artifacts_dir, trial_id)
    local = storage.SCRATCH / "trials" / trial_id if storage.is_uri(location) else Path(location)
    local.mkdir(parents=True, exist_ok=True)
    return location, local


def _run_on_node(config: dict[str, Any], context, *, trial_id: str, location: str, local: Path) -> TrialRecord:
    """The pipeline under the node lock, its files put where they belong, as a record."""
    with shared():  # importing TensorFlow takes seconds of CPU: not while someone measures
        from search.trial import MODEL_FILE, run_trial

    result = run_trial(TrialParams.from_config(config), context, out_dir=local, guard=node_guard)
    result = with_targets(result, (local / MODEL_FILE).read_bytes(), context)
    if storage.is_uri(location):  # on an object store the files go up; the node keeps nothing of them
        storage.upload(local / MODEL_FILE, storage.join(location, MODEL_FILE))
        shutil.rmtree(local, ignore_errors=True)
    record = result.record(trial_id, node=_node_id(), host=os.uname().nodename,
                           model_path=storage.join(location, MODEL_FILE))
    return missing_is_infeasible(judge(record, baseline=context.baseline, constraints=context.space.constraints),
                                 context.space)


def with_targets(result, content: bytes, context):
    """``result`` with its model measured on every device target (``search.targets``), each value
    suffixed ``@<target>``; a target that did not answer leaves its reason instead."""
    from search.targets import measure_on_targets

    if not context.space.measure.devices:
        return result
    found = measure_on_targets(content, resolution=result.params.resolution, mode=result.params.quantization,
                               measure=context.space.measure, references=context.latency_reference)
    return replace(result, metrics={**result.metrics, **found})


def missing_is_infeasible(record: TrialRecord, space: Space) -> TrialRecord:
    """A completed trial without one of its objectives (a device that did not answer) stays recorded,
    but cannot be ranked: it is infeasible, and Optuna is told FAIL (``OptunaSearchWithFailures``)."""
    if record.completed and any(record.metrics.get(name) is None for name in space.metric_names):
        return replace(record, feasible=False)
    return record


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def trainable(config: dict[str, Any], context, artifacts_dir: str) -> None:
    """Ray Tune function trainable: one trial, one report (its objective values and its record)."""
    trial_id = tune.get_context().get_trial_id()
    location, local = trial_folder(artifacts_dir, trial_id)
    earlier = storage.read_bytes(storage.join(location, RESULT))
    if earlier is not None:
        # Finished before the driver was killed, but after Tune's last state save: report it again.
        tune.report({**json.loads(earlier), "resumed_from_record": True})
        return
    try:
        record = _run_on_node(config, context, trial_id=trial_id, location=location, local=local)
    except Exception as error:  # the trial's own error is data: recorded, never retried
        message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        record = TrialRecord(trial_id, FAILED, message, params=TrialParams.from_config(config).as_dict(),
                             node=_node_id(), host=os.uname().nodename)
    # Tune's strict metric check wants every objective in a result; None tells the searcher nothing.
    values = {name: record.metrics.get(name) for name in context.space.metric_names}
    result = {**values, "error": record.error, "record": record.to_dict(),
              MISSING: [name for name, value in values.items() if value is None] if record.completed else [],
              CONSTRAINTS: [list(pair) for pair in violations(record.metrics, context.space.constraints).items()]
              if record.completed else None}
    storage.write_bytes(storage.join(location, RESULT), json.dumps(result, default=str).encode())
    tune.report(result)


class TrialRecorder(tune.Callback):
    """Collects finished trials' records and keeps ``trials.json`` / ``trials.csv`` current
    (``search.record``), printing one progress line per trial."""

    def __init__(self, run_dir: Path, *, budget: int | None, baseline: TrialRecord | None = None, echo=print):
        self.run_dir = Path(run_dir)
        self.budget = budget
        self.baseline = baseline
        self.echo = echo
        self.records: list[TrialRecord] = []
        self._started: dict[str, float] = {}

    def setup(self, **info):
        self.records = read_records(self.run_dir)  # a resumed search continues the record it left

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.monotonic()
        self.echo(f"  started  {trial.trial_id}: {TrialParams.from_config(trial.config).describe()}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.echo(f"  retrying {trial.trial_id}: its worker process or node was lost (failure {trial.num_failures})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = (trial.last_result or {}).get("record")
        self._finish(trial, TrialRecord.from_dict(record) if record else self._lost(trial, "it reported no result"))

    def on_trial_error(self, iteration, trials, trial, **info):
        # Died outside the pipeline (a killed worker or node) after its retries: Ray's message, its last line.
        message = str(getattr(trial, "error_msg", "") or "trial process failed")
        self._finish(trial, self._lost(trial, message.strip().splitlines()[-1][:500]))

    @staticmethod
    def _lost(trial, error: str) -> TrialRecord:
        return TrialRecord(trial.trial_id, FAILED, error, params=TrialParams.from_config(trial.config).as_dict())

    def _finish(self, trial, record: TrialRecord) -> None:
        # A trial reported again (finished just before the driver died, found by its result.json
        # on resume) keeps the time it first finished.
        earlier = next((r for r in self.records if r.trial_id == record.trial_id), None)
        record = replace(record, finished_at=(earlier and earlier.finished_at) or round(time.time(), 3))
        self.records = [r for r in self.records if r.trial_id != record.trial_id] + [record]
        write_records(self.run_dir, self.records, baseline=self.baseline)
        seconds = time.monotonic() - self._started.get(trial.trial_id, time.monotonic())
        count = f"{len(self.records)}/{self.budget}" if self.budget else str(len(self.records))
        self.echo(f"[{count:>7}] {trial.trial_id} in {seconds:4.0f}s | "
                  f"{TrialParams.from_config(trial.config).describe()} | {record.describe()}")


def _function(context, artifacts_dir: str):
    return tune.with_resources(tune.with_parameters(trainable, context=context, artifacts_dir=artifacts_dir),
                               {"cpu": context.space.budget.cpus_per_trial})


def run_tuner(space: Space, context, *, artifacts_dir: str, run_dir: Path, recorder: TrialRecorder) -> None:
    """Run the search to its budget; every finished trial lands in ``recorder``."""
    from ray.tune.search import ConcurrencyLimiter

    budget = space.budget
    searcher = OptunaSearchWithFailures(
        space=space.suggest, metric=space.metric_names, mode=space.modes, sampler=make_sampler(space),
        study_name=space.name, storage=journal_storage(run_dir),  # Optuna's own tools open it (search.study)
    )
    searcher = ConcurrencyLimiter(searcher, max_concurrent=budget.max_concurrent)
    tuner = tune.Tuner(
        _function(context, artifacts_dir),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=budget.trials if budget.trials is not None else -1,
            time_budget_s=budget.time_budget_s,
            max_concurrent_trials=budget.max_concurrent,
            # A worker process runs trial after trial: importing TensorFlow and starting the actor
            # (~4 s) is paid once per worker, not per trial, which is a third of a trial whose
            # fine-tune comes from the stage cache. Its memory stays flat (12 trials in one
            # process: 0.96-1.10 GB) because each trial starts from a cleared Keras session.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(run_dir.resolve()),
            verbose=0,  # the recorder prints one line per trial instead of Ray's tables
            callbacks=[recorder],
            # Only infrastructure failures reach Tune as errors (see the module docstring).
            failure_config=tune.FailureConfig(max_failures=budget.max_retries, fail_fast=False),
        ),
    )
    tuner.fit()



def can_resume_tuner(run_dir: Path) -> bool:
    """Whether Tune saved enough of this run's search to continue it."""
    return tune.Tuner.can_restore(str((run_dir / TUNE_DIR).resolve()))


def resume_tuner(context, *, artifacts_dir: str, run_dir: Path) -> None:
    """Continue the search saved in ``run_dir``: the sampler's history, finished trials kept.

    Trials that were running when the driver died run again (or report their ``result.json``);
    errored ones stay recorded as failed. The recorder is the one saved with the run.
    """
    tuner = tune.Tuner.restore(
        str((run_dir / TUNE_DIR).resolve()), trainable=_function(context, artifacts_dir),
        resume_unfinished=True, resume_errored=False, restart_errored=False,
    )
    tuner.fit()


def start_ray(address: str | None):
    """Connect to ``address`` (or RAY_ADDRESS), or start an embedded local Ray for this run."""
    import logging

    import ray

    kwargs: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
        runtime_env={"env_vars": WORKER_ENV},
    )
    if address:
        return ray.init(address=address, **kwargs)
    return ray.init(num_cpus=os.cpu_count(), **kwargs)


def unreadable_on_nodes(paths: list[str]) -> list[tuple[str, str]]:
    """``(node, path)`` for each of ``paths`` that some alive node with CPUs cannot see.

    Trials run on any node and read the data, the base weights and the storage by path (or by
    URI, for an object store), so every node must mount them at the same path, or reach the same
    store. One zero-CPU task per node looks, before any trial runs.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def missing(paths: list[str]) -> list[str]:
        from search import storage

        return [path for path in paths if not storage.exists(path)]

    looks = {
        f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})": missing.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(paths)
        for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0
    }
    return [(node, path) for node, look in looks.items() for path in ray.get(look, timeout=300)]


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
