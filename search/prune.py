"""Magnitude pruning of a detector's convolutions with TFMOT, fitted to a short fine-tune.

``prune`` returns a wrapped clone, ``strip`` removes the wrappers, ``prune_at_once`` zeroes the
weights without training, ``measured_sparsity`` counts
the zeros that are really there, and ``prune_and_fine_tune`` does all three around ``train``
(or, for the ``filters`` structure, which TFMOT cannot express, removes filters with
``search.prune_filters`` and returns a thinner network).
What can be asked for (schedules, structures, ``PruningSpec``) is in the TensorFlow-free
``search.pruning``; this module only applies it.

Which layers are pruned: every ``Conv2D`` except the ``dense_layers`` the caller names, which
its model family gives (for the stock family the heads' 1x1 output convs, whose output channels are
directly box coordinates and logits, so zeros there cost accuracy and buy no size). BatchNorm,
``Lambda`` layers (which whole-model ``prune_low_magnitude`` refuses), pooling and upsampling are
cloned unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from search.compat import keras
from search.errors import SpaceError
from search.pruning import MIN_PRUNING_STEPS, SCHEDULES, STRUCTURES, PruningSpec, pruning_timing
from search.train import Distillation, train

if TYPE_CHECKING:
    from search.models import ModelFamily, YoloHeads


def is_pruned_layer(layer, *, dense_layers: Sequence[str]) -> bool:
    """Whether ``prune`` wraps this layer: every ``Conv2D`` not named in ``dense_layers``."""
    return isinstance(layer, keras.layers.Conv2D) and layer.name not in dense_layers


def copy_weights(source: keras.Model, clone: keras.Model) -> None:
    """Copy weights layer by layer, by name; a wrapper (pruning, QAT) receives its inner layer's weights."""
    by_name = {getattr(layer, "layer", layer).name: layer for layer in clone.layers}
    for layer in source.layers:
        if layer.weights:
            target = by_name[layer.name]
            getattr(target, "layer", target).set_weights(layer.get_weights())


def _check_steps(spec: PruningSpec, steps: int) -> None:
    if SCHEDULES[spec.schedule].prunes and steps < MIN_PRUNING_STEPS:
        raise SpaceError(
            f"pruning schedule {spec.schedule!r} needs at least {MIN_PRUNING_STEPS} fine-tune steps to reach "
            f"sparsity {spec.sparsity} and recover, but got {steps}."
        )


def prune(model: keras.Model, spec: PruningSpec, *, steps: int, dense_layers: Sequence[str]) -> keras.Model:
    """A clone of ``model`` whose prunable convs are TFMOT-wrapped to reach ``spec`` over ``steps``.

    ``model`` itself is not touched; the convs named in ``dense_layers`` stay unpruned. Schedule
    ``none`` returns a plain clone. Raises ``SpaceError`` when ``steps`` is too short for the
    schedule to prune and recover.
    """
    row = SCHEDULES[spec.schedule]
    if spec.removes_filters:
        raise ValueError(f"prune wraps weights for TFMOT; structure {spec.structure!r} removes filters "
                         "(prune_and_fine_tune with the family), but got it here.")
    _check_steps(spec, steps)
    wrapping = None
    if row.prunes:
        wrapping = {"pruning_schedule": row.build(spec, pruning_timing(steps=steps)),
                    "sparsity_m_by_n": STRUCTURES[spec.structure].m_by_n}
    return _wrapped_clone(model, dense_layers=dense_layers, wrapping=wrapping)


def _wrapped_clone(model: keras.Model, *, dense_layers: Sequence[str], wrapping: dict | None) -> keras.Model:
    """A clone of ``model`` with its weights, each prunable conv wrapped by TFMOT's
    ``prune_low_magnitude(**wrapping)`` (``None``: a plain clone)."""
    from search.compat import tfmot

    def clone_layer(layer):
        # A fresh layer from its config: wrapping `layer` itself would share (and prune) its weights.
        fresh = layer.__class__.from_config(layer.get_config())
        if wrapping is not None and is_pruned_layer(layer, dense_layers=dense_layers):
            return tfmot.sparsity.keras.prune_low_magnitude(fresh, **wrapping)
        return fresh

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    copy_weights(model, clone)
    return clone


def prune_at_once(model: keras.Model, spec: PruningSpec, *, dense_layers: Sequence[str]) -> keras.Model:
    """A stripped clone of ``model`` with ``spec``'s final sparsity reached in one TFMOT mask update,
    no training: the smallest magnitudes (of every four, for 2:4) zeroed in the convs ``prune``
    would wrap. What a file's bytes and latency depend on, without a fine-tune's minutes (the
    benchmarks and tests of the sparse encoding); ``prune_and_fine_tune`` is how a trial prunes."""
    from search.compat import tfmot

    if not spec.prunes or spec.removes_filters:
        raise ValueError(f"prune_at_once zeroes weights, so it needs a pruning schedule and structure "
                         f"'unstructured' or '2:4', but got {spec.schedule!r} and {spec.structure!r}.")
    schedule = tfmot.sparsity.keras.ConstantSparsity(spec.sparsity, begin_step=0, frequency=1)
    clone = _wrapped_clone(model, dense_layers=dense_layers,
                           wrapping={"pruning_schedule": schedule, "sparsity_m_by_n": STRUCTURES[spec.structure].m_by_n})
    for layer in clone.layers:
        if hasattr(layer, "pruning_obj"):
            # Step 1 is when TFMOT sets m-by-n masks, and ConstantSparsity(begin_step=0) masks every step.
            layer.pruning_step.assign(1)
            layer.pruning_obj.conditional_mask_update()
            layer.pruning_obj.weight_mask_op()
    return strip(clone)


def strip(model: keras.Model) -> keras.Model:
    """The model without pruning wrappers, kernels as last masked (TFMOT's ``strip_pruning``)."""
    from search.compat import tfmot

    return tfmot.sparsity.keras.strip_pruning(model)


def measured_sparsity(model: keras.Model, *, dense_layers: Sequence[str]) -> float:
    """Fraction of exact zeros over the kernels of the convs ``prune`` would wrap.

    Counts what is really in the weights, whatever any schedule promised; on a wrapped model it
    reads the inner kernels (masked only after training has ended).
    """
    zeros = total = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if is_pruned_layer(inner, dense_layers=dense_layers):
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
    dense_layers: Sequence[str],
    heads: YoloHeads,
    images: np.ndarray,
    boxes: Sequence,
    classes: Sequence,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    progress: str | None = None,
    family: ModelFamily | None = None,
    distill_weight: float = 0.0,
) -> tuple[keras.Model, float]:
    """Prune a clone of ``model`` while fine-tuning it ``steps`` steps; return it stripped, with its sparsity.

    ``dense_layers`` and ``heads`` come from the model's family. Schedule ``none`` fine-tunes an
    unpruned clone for the same steps, so the baseline and the pruned variants have had the same
    training. Structure ``filters`` needs ``family`` (which filters go together, and the rebuild)
    and returns the thinner network, with the fraction of its removable filters removed
    (``search.prune_filters``). With ``distill_weight > 0`` the fine-tune also distils from ``model``
    itself (``search.train.distillation_loss``): pruning works on a clone, so ``model`` stays the
    unpruned, untrained teacher, wide where the student's filters are masked.
    """
    train_kwargs = dict(heads=heads, images=images, boxes=boxes, classes=classes, batch_size=batch_size,
                        learning_rate=learning_rate, seed=seed, progress=progress,
                        distill=Distillation(model, distill_weight) if distill_weight else None)
    if spec.removes_filters:
        from search.prune_filters import remove_filters_and_fine_tune

        if family is None:
            raise ValueError(f"pruning structure {spec.structure!r} needs the model's family, but got None.")
        _check_steps(spec, steps)
        return remove_filters_and_fine_tune(model, spec, family=family, steps=steps, train_kwargs=train_kwargs)
    pruned = prune(model, spec, steps=steps, dense_layers=dense_layers)
    train(pruned, steps=steps, **train_kwargs)
    stripped = strip(pruned)
    return stripped, measured_sparsity(stripped, dense_layers=dense_layers)
