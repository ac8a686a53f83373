"""Ray Tune + Optuna around ``run_trial``: the sampler, the trainable, the recorder, the run.

The trainable is a few lines: set the thread count, run the pipeline, report the metrics. A trial
that raises is marked ERROR by Tune and told to Optuna as FAIL (``OptunaSearch.on_trial_complete``),
and the search goes on; ``TrialRecorder`` writes its row with the error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from search.record import TrialRecorder
from search.space import Space
from search.trial import TrialContext, TrialParams, run_trial

# What every Ray worker needs in its environment before it imports TensorFlow.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
# Ray Tune's newer console output ignores verbose=0 for its start banner; the legacy one honours it.
# The recorder prints one line per trial instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


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


def trainable(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: one trial, one report."""
    from ray import tune

    from search.compat import set_threads

    set_threads(context.space.budget.cpus_per_trial)
    trial_id = tune.get_context().get_trial_id()
    try:
        metrics = run_trial(TrialParams.from_config(config), context, trial_id=trial_id)
    except Exception as error:
        # The recorder reads this one line; Tune keeps the whole traceback in its own error file.
        folder = Path(context.artifacts_dir) / trial_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(f"{type(error).__name__}: {error}".splitlines()[0][:500])
        raise
    tune.report({**metrics, "node": os.uname().nodename})


def run_tuner(space: Space, context: TrialContext, *, run_dir: Path, recorder: TrialRecorder) -> None:
    """Run the search to its budget; every finished trial lands in ``recorder``."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    budget = space.budget
    searcher = OptunaSearch(
        space=space.suggest, metric=space.metric_names, mode=space.modes, sampler=make_sampler(space)
    )
    searcher = ConcurrencyLimiter(searcher, max_concurrent=budget.max_concurrent)
    function = tune.with_resources(tune.with_parameters(trainable, context=context), {"cpu": budget.cpus_per_trial})
    tuner = tune.Tuner(
        function,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=budget.trials if budget.trials is not None else -1,
            time_budget_s=budget.time_budget_s,
            max_concurrent_trials=budget.max_concurrent,
            reuse_actors=False,  # a fresh process per trial: TensorFlow's memory does not pile up
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(run_dir.resolve()),
            verbose=0,  # the recorder prints one line per trial instead of Ray's tables
            callbacks=[recorder],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
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


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
