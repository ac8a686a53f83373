"""Magnitude pruning of YOLOv4-tiny's convolutions with TFMOT, fitted to a short fine-tune.

``prune`` returns a wrapped clone, ``strip`` removes the wrappers, ``measured_sparsity`` counts
the zeros that are really there, and ``prune_and_fine_tune`` does all three around ``train``.

Which layers are pruned: every ``Conv2D`` except the two 1x1 output convs ``conv_29`` and
``conv_36``. Those hold about 0.3% of the weights, and each of their output channels is
directly a box coordinate, objectness or class logit, so zeros there cost accuracy and buy no
size. BatchNorm, the CSP split (a ``Lambda``, which whole-model ``prune_low_magnitude`` refuses),
pooling and upsampling are cloned unchanged.

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
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from search.compat import keras
from search.errors import SpaceError
from search.train import train

UNPRUNED_CONVS = ("conv_29", "conv_36")  # the 1x1 output convs of the two heads (see above)
PRUNE_END_FRACTION = 0.7  # target reached here; the last 30% of the fine-tune recovers accuracy
MASK_UPDATES = 10  # pruning steps spread over [0, end_step]: frequency = steps // MASK_UPDATES
MIN_PRUNING_STEPS = 10  # fewer fine-tune steps cannot both reach a target and recover from it
FINE_TUNE_LEARNING_RATE = 2e-4  # 60 steps at 5e-4 alone took a base model from mAP@0.5 0.69 to 0.66


@dataclass(frozen=True)
class PruningTiming:
    """When TFMOT updates masks, in fine-tune steps (the wrappers count from 1)."""

    begin_step: int
    end_step: int
    frequency: int


@dataclass(frozen=True)
class Schedule:
    """One row of ``SCHEDULES``: whether it prunes at all, and how its TFMOT schedule is built."""

    prunes: bool
    build: Callable[[PruningSpec, PruningTiming], object] | None


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
    "none": Schedule(prunes=False, build=None),  # fine-tune only: the unpruned baseline
    "constant": Schedule(prunes=True, build=_constant),  # the target at once, re-masked as weights move
    "polynomial_decay": Schedule(prunes=True, build=_polynomial_decay),  # initial -> target, gentler
}

# structure -> TFMOT's sparsity_m_by_n (None: any weight may be zeroed)
STRUCTURES: dict[str, tuple[int, int] | None] = {"unstructured": None, "2:4": (2, 4)}


def _closest(value: str, allowed) -> str:
    match = difflib.get_close_matches(value, list(allowed), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how; validated on construction (``SpaceError`` names the bad field)."""

    schedule: str = "none"  # key of SCHEDULES; "none" keeps every weight (the baseline)
    target_sparsity: float = 0.0  # final fraction of zeros in prunable kernels
    structure: str = "unstructured"  # key of STRUCTURES
    initial_sparsity: float = 0.0  # polynomial_decay only: TFMOT's default start
    power: float = 3.0  # polynomial_decay only: TFMOT's default, prunes fast early, slowly late

    @property
    def sparsity(self) -> float:
        """The fraction of zeros this spec aims at: its target, or 0.5 for ``2:4``."""
        return 0.5 if self.structure == "2:4" else self.target_sparsity

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise SpaceError(
                f"pruning schedule must be one of {sorted(SCHEDULES)}, but got {self.schedule!r}"
                f"{_closest(self.schedule, SCHEDULES)}."
            )
        if self.structure not in STRUCTURES:
            raise SpaceError(
                f"pruning structure must be one of {sorted(STRUCTURES)}, but got {self.structure!r}"
                f"{_closest(self.structure, STRUCTURES)}."
            )
        if not 0.0 <= self.target_sparsity < 1.0:
            raise SpaceError(f"target_sparsity must be in [0, 1), but got {self.target_sparsity}.")
        if not SCHEDULES[self.schedule].prunes:
            if self.target_sparsity != 0.0 or self.structure != "unstructured":
                raise SpaceError(
                    f"pruning schedule 'none' prunes nothing, so it needs target_sparsity 0 and structure "
                    f"'unstructured', but got {self.target_sparsity} and {self.structure!r}."
                )
            return
        if self.structure == "2:4":
            if self.target_sparsity not in (0.0, 0.5):
                raise SpaceError(
                    "structure '2:4' zeroes exactly 2 of every 4 weights, so target_sparsity must be 0.5 "
                    f"(or 0: unset), but got {self.target_sparsity}."
                )
            return
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


def pruning_timing(*, steps: int) -> PruningTiming:
    """Mask updates every ``steps // 10`` steps from the start, ending on an update near 70%.

    ``end_step`` is a multiple of ``frequency`` so the last update falls exactly on it: TFMOT's
    polynomial schedule reaches its final sparsity only at ``end_step``.
    """
    frequency = max(1, steps // MASK_UPDATES)
    end_step = frequency * max(1, round(PRUNE_END_FRACTION * steps / frequency))
    return PruningTiming(begin_step=0, end_step=end_step, frequency=frequency)


def is_pruned_layer(layer) -> bool:
    """Whether ``prune`` wraps this layer: every ``Conv2D`` but the heads' output convs."""
    return isinstance(layer, keras.layers.Conv2D) and layer.name not in UNPRUNED_CONVS


def _copy_weights(source: keras.Model, clone: keras.Model) -> None:
    """Copy weights layer by layer; a pruning wrapper receives its inner layer's weights."""
    by_name = {getattr(layer, "layer", layer).name: layer for layer in clone.layers}
    for layer in source.layers:
        if layer.weights:
            target = by_name[layer.name]
            getattr(target, "layer", target).set_weights(layer.get_weights())


def prune(model: keras.Model, spec: PruningSpec, *, steps: int) -> keras.Model:
    """A clone of ``model`` whose prunable convs are TFMOT-wrapped to reach ``spec`` over ``steps``.

    ``model`` itself is not touched. Schedule ``none`` returns a plain clone. Raises
    ``SpaceError`` when ``steps`` is too short for the schedule to prune and recover.
    """
    from search.compat import tfmot

    row = SCHEDULES[spec.schedule]
    if row.prunes and steps < MIN_PRUNING_STEPS:
        raise SpaceError(
            f"pruning schedule {spec.schedule!r} needs at least {MIN_PRUNING_STEPS} fine-tune steps to reach "
            f"sparsity {spec.sparsity} and recover, but got {steps}."
        )
    params = {}
    if row.prunes:
        params = {
            "pruning_schedule": row.build(spec, pruning_timing(steps=steps)),
            "sparsity_m_by_n": STRUCTURES[spec.structure],
        }

    def clone_layer(layer):
        # A fresh layer from its config: wrapping `layer` itself would share (and prune) its weights.
        fresh = layer.__class__.from_config(layer.get_config())
        if row.prunes and is_pruned_layer(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(fresh, **params)
        return fresh

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    _copy_weights(model, clone)
    return clone


def strip(model: keras.Model) -> keras.Model:
    """The model without pruning wrappers, kernels as last masked (TFMOT's ``strip_pruning``)."""
    from search.compat import tfmot

    return tfmot.sparsity.keras.strip_pruning(model)


def measured_sparsity(model: keras.Model) -> float:
    """Fraction of exact zeros over the kernels of the convs ``prune`` would wrap.

    Counts what is really in the weights, whatever any schedule promised; on a wrapped model it
    reads the inner kernels (masked only after training has ended).
    """
    zeros = total = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if is_pruned_layer(inner):
            kernel = keras.backend.get_value(inner.kernel)
            zeros += int(np.count_nonzero(kernel == 0.0))
            total += kernel.size
    if total == 0:
        raise ValueError(f"model {model.name!r} has no prunable Conv2D layers.")
    return zeros / total


def prune_and_fine_tune(
    model: keras.Model,
    spec: PruningSpec,
    *,
    steps: int,
    images: np.ndarray,
    boxes: Sequence,
    classes: Sequence,
    num_classes: int,
    batch_size: int = 8,
    learning_rate: float = FINE_TUNE_LEARNING_RATE,
    seed: int = 0,
    progress: str | None = None,
) -> tuple[keras.Model, float]:
    """Prune a clone of ``model`` while fine-tuning it ``steps`` steps; return it stripped, with its sparsity.

    Schedule ``none`` fine-tunes an unpruned clone for the same steps, so the baseline and the
    pruned variants have had the same training.
    """
    pruned = prune(model, spec, steps=steps)
    train(
        pruned,
        images=images,
        boxes=boxes,
        classes=classes,
        num_classes=num_classes,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
    )
    stripped = strip(pruned)
    return stripped, measured_sparsity(stripped)
