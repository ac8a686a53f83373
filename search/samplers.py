"""The Optuna samplers a space may name (``budget.sampler``): one table, read by the validator and the tuner.

Optuna is imported inside ``make`` only, so reading the names (``python -m search validate``)
stays cheap. Every sampler is seeded with ``budget.seed``: the same space proposes the same trials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.space import BudgetSpec

# Samplers size themselves on the trial budget; a search bounded by time alone plans for this many.
UNBOUNDED_TRIALS = 50


@dataclass(frozen=True)
class Sampler:
    """One row of ``SAMPLERS``: what it does, and how to make it for a budget."""

    description: str
    make: Callable[[BudgetSpec], Any]  # budget -> optuna.samplers.BaseSampler, seeded
    # Whether it steers away from trials that break the space's constraints. Optuna 5 samplers
    # read each trial's constraints (Trial.set_constraint, which search.tuner calls before
    # telling a result), so no constraints_func is passed (Optuna 5 deprecates it).
    learns_constraints: bool


def _optuna():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's `group` is marked experimental; it is the documented way to model conditional spaces.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _tpe(budget: BudgetSpec):
    # multivariate + group model the conditional parameters jointly; constant_liar stops
    # concurrent trials from being proposed the same point; a third of the budget (at most 10,
    # Optuna's default) is random start-up, so a 12-trial search gets 8 model-guided proposals.
    trials = budget.trials or UNBOUNDED_TRIALS
    return _optuna().samplers.TPESampler(
        seed=budget.seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=max(3, min(10, trials // 3)),
    )


def _nsga2(budget: BudgetSpec):
    # A population of a quarter of the budget still leaves a few generations to evolve.
    trials = budget.trials or UNBOUNDED_TRIALS
    return _optuna().samplers.NSGAIISampler(seed=budget.seed, population_size=max(4, min(50, trials // 4)))


def _random(budget: BudgetSpec):  # draws ignore feasibility by design
    return _optuna().samplers.RandomSampler(seed=budget.seed)


SAMPLERS: dict[str, Sampler] = {
    "tpe": Sampler("Optuna's TPE, multivariate over the conditional parameters (the default)", _tpe, True),
    "nsga2": Sampler("NSGA-II, a genetic multi-objective search; needs a budget of several generations", _nsga2, True),
    "random": Sampler("independent uniform draws: a baseline, and reproducible per seed", _random, False),
}
