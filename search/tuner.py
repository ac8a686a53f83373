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
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from search.node_lock import shared
from search.record import TrialRecorder
from search.space import Space
from search.trial import TrialContext, TrialParams, run_trial

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


def make_sampler(space: Space):
    """The Optuna sampler the space names, seeded."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's `group` is marked experimental; it is the documented way to model conditional spaces.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    budget = space.budget
    trials = budget.trials or 50
    if budget.sampler == "random":
        return optuna.samplers.RandomSampler(seed=budget.seed)
    if budget.sampler == "nsga2":
        # A population of a quarter of the budget still leaves a few generations to evolve.
        return optuna.samplers.NSGAIISampler(seed=budget.seed, population_size=max(4, min(50, trials // 4)))
    # TPE: multivariate + group model the conditional parameters jointly; constant_liar stops
    # concurrent trials from being proposed the same point; a third of the budget (at most 10,
    # Optuna's default) is random start-up, so a 12-trial search gets 8 model-guided proposals.
    return optuna.samplers.TPESampler(
        seed=budget.seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=max(3, min(10, trials // 3)),
    )


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
            if result and result.get("error"):
                return super().on_trial_complete(trial_id, None, error=True)
            return super().on_trial_complete(trial_id, result, error)


def trainable(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: one trial, one report (its metrics, or its own error)."""
    import ray
    from ray import tune

    from search import storage

    trial_id = tune.get_context().get_trial_id()
    record = storage.join(context.artifacts_dir, trial_id, RESULT)
    node = {"node": ray.get_runtime_context().get_node_id(), "host": os.uname().nodename}
    earlier = storage.read_bytes(record)
    if earlier is not None:
        # Finished before the driver was killed, but after Tune's last state save: report it again.
        tune.report({**json.loads(earlier), "resumed_from_record": True})
        return
    try:
        result = {**run_trial(TrialParams.from_config(config), context, trial_id=trial_id), **node}
    except Exception as error:
        # Tune's strict metric check wants every objective in a result; None tells the recorder nothing.
        message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        result = {**{name: None for name in context.space.metric_names}, "error": message, **node}
    storage.write_bytes(record, json.dumps(result, default=str).encode())
    tune.report(result)


def _function(context: TrialContext):
    from ray import tune

    return tune.with_resources(tune.with_parameters(trainable, context=context), {"cpu": context.space.budget.cpus_per_trial})


def run_tuner(space: Space, context: TrialContext, *, run_dir: Path, recorder: TrialRecorder) -> None:
    """Run the search to its budget; every finished trial lands in ``recorder``."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    budget = space.budget
    searcher = OptunaSearchWithFailures(
        space=space.suggest, metric=space.metric_names, mode=space.modes, sampler=make_sampler(space)
    )
    searcher = ConcurrencyLimiter(searcher, max_concurrent=budget.max_concurrent)
    tuner = tune.Tuner(
        _function(context),
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
    from ray import tune

    return tune.Tuner.can_restore(str((run_dir / TUNE_DIR).resolve()))


def resume_tuner(context: TrialContext, *, run_dir: Path) -> None:
    """Continue the search saved in ``run_dir``: the sampler's history, finished trials kept.

    Trials that were running when the driver died run again (or report their ``result.json``);
    errored ones stay recorded as failed. The recorder is the one saved with the run.
    """
    from ray import tune

    tuner = tune.Tuner.restore(
        str((run_dir / TUNE_DIR).resolve()), trainable=_function(context),
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
