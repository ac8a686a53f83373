"""What pruning can be asked for: the schedules, the structures, and a validated ``PruningSpec``.

TensorFlow-free, so the space validator reads the same rows ``search.prune`` prunes with: a
schedule row says whether it prunes and builds its TFMOT schedule only when called (TFMOT is
imported there), a structure row says which weights may be zeroed.

When pruning happens: TFMOT prunes only every ``frequency`` steps between ``begin_step`` and
``end_step`` (default frequency 100), so a fine-tune shorter than that would silently prune
nothing. Here the timing is derived from the fine-tune length: pruning starts at once, is
updated ten times, and reaches its target at ``PRUNE_END_FRACTION`` of the steps, leaving the rest
to recover accuracy under the final mask.

The ``2:4`` structure (two zeros in every four consecutive input channels, what sparse tensor
cores and XNNPack's sparse kernels want) is TFMOT's ``sparsity_m_by_n=(2, 4)``. TFMOT computes
that mask once, at the first step, whatever the schedule says: any schedule that prunes gives the
same 2:4 model, and the sparsity is the structure's, so ``target_sparsity`` must be 0.5 or left
at 0 (unset); any other target is an error rather than a setting silently ignored.

The ``filters`` structure removes whole filters instead of zeroing weights, so the network gets
thinner and its bytes, MACs and latency shrink (``search.prune_filters``). Its ``target_sparsity``
is the fraction of the prunable convs' filters removed (not of their weights, nor of MACs: a
filter removed also removes an input channel of each conv reading it, so MACs fall faster, about
``1 - (1 - s)^2``). The schedule is followed as for the other structures: at each mask update the
schedule's sparsity says how many filters are masked (their outputs zeroed after the activation),
and when the fine-tune ends the masked filters are removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from search.errors import SpaceError
from search.spec import choose

PRUNE_END_FRACTION = 0.7  # target reached here; the last 30% of the fine-tune recovers accuracy
MASK_UPDATES = 10  # pruning steps spread over [0, end_step]: frequency = steps // MASK_UPDATES
MIN_PRUNING_STEPS = 10  # fewer fine-tune steps cannot both reach a target and recover from it


@dataclass(frozen=True)
class PruningTiming:
    """When TFMOT updates masks, in fine-tune steps (the wrappers count from 1)."""

    begin_step: int
    end_step: int
    frequency: int


def pruning_timing(*, steps: int) -> PruningTiming:
    """Mask updates every ``steps // 10`` steps from the start, ending on an update near 70%.

    ``end_step`` is a multiple of ``frequency`` so the last update falls exactly on it: TFMOT's
    polynomial schedule reaches its final sparsity only at ``end_step``.
    """
    frequency = max(1, steps // MASK_UPDATES)
    end_step = frequency * max(1, round(PRUNE_END_FRACTION * steps / frequency))
    return PruningTiming(begin_step=0, end_step=end_step, frequency=frequency)


# --- schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """One row of ``SCHEDULES``: whether it prunes at all, and how its TFMOT schedule is built."""

    description: str
    prunes: bool
    build: Callable[[PruningSpec, PruningTiming], object] | None  # imports TFMOT when called


def _constant(spec: PruningSpec, timing: PruningTiming):
    from search.compat import tfmot

    return tfmot.sparsity.keras.ConstantSparsity(
        spec.sparsity, begin_step=timing.begin_step, end_step=timing.end_step, frequency=timing.frequency
    )


def _polynomial_decay(spec: PruningSpec, timing: PruningTiming):
    from search.compat import tfmot

    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=spec.initial_sparsity,
        final_sparsity=spec.sparsity,
        begin_step=timing.begin_step,
        end_step=timing.end_step,
        power=spec.power,
        frequency=timing.frequency,
    )


SCHEDULES: dict[str, Schedule] = {
    "none": Schedule("fine-tune only: the unpruned baseline", prunes=False, build=None),
    "constant": Schedule("the target at once, re-masked as the weights move", prunes=True, build=_constant),
    "polynomial_decay": Schedule("initial -> target sparsity, fast early and slowly late; gentler",
                                 prunes=True, build=_polynomial_decay),
}


# --- structures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """One row of ``STRUCTURES``: which weights may be zeroed, or whether whole filters go."""

    description: str
    m_by_n: tuple[int, int] | None  # TFMOT's sparsity_m_by_n: at most m nonzero in every n; None: any weight
    removes_filters: bool = False  # True: filters are removed and the network rebuilt thinner (search.prune_filters)

    @property
    def implied_sparsity(self) -> float | None:
        """The sparsity the structure itself fixes (0.5 for 2:4); None when the target decides."""
        if self.m_by_n is None:
            return None
        kept, block = self.m_by_n
        return (block - kept) / block


STRUCTURES: dict[str, Structure] = {
    "unstructured": Structure("any weight may be zeroed: the smallest magnitudes go", m_by_n=None),
    "2:4": Structure("2 zeros in every 4 consecutive input channels (sparse tensor cores, XNNPack)", m_by_n=(2, 4)),
    "filters": Structure("whole filters (lowest BN-folded kernel L1 first) removed: a thinner network, fewer MACs",
                         m_by_n=None, removes_filters=True),
}


# --- the spec ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how; validated on construction (``SpaceError`` names the bad field)."""

    schedule: str = "none"  # key of SCHEDULES; "none" keeps every weight (the baseline)
    # final fraction of zeros in prunable kernels; for structure "filters", of their filters removed
    target_sparsity: float = 0.0
    structure: str = "unstructured"  # key of STRUCTURES
    initial_sparsity: float = 0.0  # polynomial_decay only: TFMOT's default start
    power: float = 3.0  # polynomial_decay only: TFMOT's default, prunes fast early, slowly late

    @property
    def prunes(self) -> bool:
        """Whether the schedule zeroes any weight (``none`` is the unpruned baseline)."""
        return SCHEDULES[self.schedule].prunes

    @property
    def removes_filters(self) -> bool:
        """Whether this spec removes filters (a thinner network) rather than zeroing weights."""
        return self.prunes and STRUCTURES[self.structure].removes_filters

    @property
    def sparsity(self) -> float:
        """The fraction of zeros this spec aims at: its target, or the structure's (0.5 for ``2:4``)."""
        implied = STRUCTURES[self.structure].implied_sparsity
        return self.target_sparsity if implied is None else implied

    def __post_init__(self):
        schedule = choose(SCHEDULES, self.schedule, what="pruning schedule")
        structure = choose(STRUCTURES, self.structure, what="pruning structure")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise SpaceError(f"target_sparsity must be in [0, 1), but got {self.target_sparsity}.")
        if not schedule.prunes:
            self._check_prunes_nothing()
        elif structure.implied_sparsity is not None:
            self._check_implied(structure)
        else:
            self._check_target()

    def _check_prunes_nothing(self) -> None:
        if self.target_sparsity != 0.0 or self.structure != "unstructured":
            raise SpaceError(
                f"pruning schedule {self.schedule!r} prunes nothing, so it needs target_sparsity 0 and structure "
                f"'unstructured', but got {self.target_sparsity} and {self.structure!r}."
            )

    def _check_implied(self, structure: Structure) -> None:
        kept, block = structure.m_by_n
        if self.target_sparsity not in (0.0, structure.implied_sparsity):
            raise SpaceError(
                f"structure {self.structure!r} zeroes exactly {block - kept} of every {block} weights, so "
                f"target_sparsity must be {structure.implied_sparsity:g} (or 0: unset), but got {self.target_sparsity}."
            )

    def _check_target(self) -> None:
        if self.target_sparsity <= 0.0:
            raise SpaceError(
                f"pruning schedule {self.schedule!r} needs target_sparsity in (0, 1), but got {self.target_sparsity}; "
                "use schedule 'none' for no pruning."
            )
        if self.schedule == "polynomial_decay":
            if not 0.0 <= self.initial_sparsity < self.target_sparsity:
                raise SpaceError(
                    f"initial_sparsity must be in [0, target_sparsity={self.target_sparsity}), "
                    f"but got {self.initial_sparsity}."
                )
            if self.power <= 0.0:
                raise SpaceError(f"polynomial_decay power must be > 0, but got {self.power}.")
