"""Filter pruning: rank filters, mask them over the fine-tune as the schedule says, then remove them.

The network family decides which filters can only go together (``ModelFamily.filter_clusters``:
shortcut operands, the halves of a channel split, the heads that stay) and how to rebuild the
network without them (``ModelFamily.thin``); this module decides which and when.

- **Rank**: how much each filter's output varies: the standard deviation of ``act(gamma * z +
  beta)``, its BN's scale and offset on a standard normal z (``output_statistics``: the BN's
  moving statistics make its input z of mean 0 and variance 1 on the data it saw, so no image is
  needed). BatchNorm divides the kernel's scale away, so the kernel's norm, even BN-folded, says
  nothing of what the filter outputs: on the official weights of the default family, removing
  10% of the filters by the BN-folded kernel L1 norm took coco128 AP50 from 0.50 to 0.002, by the
  spread to 0.26 (``benchmarks/filter_pruning_accuracy.py``). A conv without a BN is ranked by its
  kernel's L1 norm. A unit's score is its filters' mean.
- **How many**: ``target_sparsity`` of the removable filters (every conv's but the family's dense
  layers' and those its ties keep, e.g. a logistic conv's; for the family cfgs, every filter of
  every conv but the heads), spread evenly over the clusters, each keeping a multiple of its ``step`` of units so
  kept widths are multiples of 8 where the ties allow; the rounding is spread (largest remainder)
  so the total stays within a few filters of the target. ``filter_widths`` records it.
- **When**: the trial's TFMOT schedule, read at each step (``search.pruning.pruning_timing``):
  where it updates masks, ``schedule sparsity / target`` of each cluster's final removal is
  masked, the lowest-ranked remaining units first (once masked, always masked). A filter's output
  is replaced by its mean (``mean_outputs``: the mean of ``act(gamma * z + beta)``), not by zero:
  when it is masked, the family folds that constant into the layers reading it (``ModelFamily.
  absorb_constants``: their bias or BN moving mean), then its kernel, bias and BN scale and offset
  are zeroed before every step, so its output is zero after its activation and the rest of the
  network learns without it. Zeroing alone would drop the mean, which the readers were trained
  with: the low-kernel-norm filters the old ranking removed often output constants above 1; the
  low-spread ones this ranking removes mostly output less (median -0.15 at 10%, official weights),
  so there the fold matters less (see ``benchmarks/README.md``).
- **Remove**: at the end the masked filters are removed (``ModelFamily.thin``): the thinner
  network computes exactly what the masked one does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from search.compat import keras, tf
from search.models.family import FilterCluster, ModelFamily
from search.pruning import SCHEDULES, PruningSpec, pruning_timing


def _norm_after(layer):
    """The BatchNormalization reading ``layer``'s output alone, or None."""
    nodes = layer.outbound_nodes
    if len(nodes) == 1 and isinstance(nodes[0].outbound_layer, keras.layers.BatchNormalization):
        return nodes[0].outbound_layer
    return None


ACTIVATION_LAYERS = (keras.layers.LeakyReLU, keras.layers.ReLU, keras.layers.Activation)


def _activation_after(layer):
    """The activation layer reading ``layer``'s output alone, or None (a linear output)."""
    nodes = layer.outbound_nodes
    if len(nodes) == 1 and isinstance(nodes[0].outbound_layer, ACTIVATION_LAYERS):
        return nodes[0].outbound_layer
    return None


def _normal_quantiles(count: int = 999) -> np.ndarray:
    from statistics import NormalDist

    return np.array([NormalDist().inv_cdf((i + 0.5) / count) for i in range(count)], np.float32)


# A BN output is ``gamma * z + beta`` with z of mean 0 and variance 1 on the data its moving statistics
# saw; taking z normal, 999 evenly spaced quantiles give the activation's mean and spread without an image.
NORMAL_QUANTILES = _normal_quantiles()


def output_statistics(model: keras.Model, conv: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Each filter's output mean and standard deviation after its BN and activation, from the BN's
    statistics (``act(gamma * z + beta)``, z standard normal); None for a conv without a BN."""
    layer = model.get_layer(conv)
    norm = _norm_after(layer)
    if norm is None:
        return None
    gamma, beta = keras.backend.get_value(norm.gamma), keras.backend.get_value(norm.beta)
    outputs = gamma[:, None] * NORMAL_QUANTILES[None] + beta[:, None]  # (filters, quantiles)
    activation = _activation_after(norm)
    if activation is not None:
        outputs = np.asarray(activation(outputs))
    return outputs.mean(axis=1), outputs.std(axis=1)


def _kernel_l1(layer) -> np.ndarray:
    kernel = np.abs(keras.backend.get_value(layer.weights[0]))
    return kernel.sum(axis=(0, 1)).reshape(-1) if isinstance(layer, keras.layers.DepthwiseConv2D) \
        else kernel.sum(axis=(0, 1, 2))


def _is_prunable(layer, dense_layers: Sequence[str]) -> bool:
    return isinstance(layer, keras.layers.Conv2D) and layer.name not in dense_layers


def filter_scores(model: keras.Model, *, dense_layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Conv name -> each filter's score, for every conv but ``dense_layers``: the standard deviation of its
    output after BN and activation (``output_statistics``); a conv without a BN, its kernel's L1 norm."""
    scores = {}
    for layer in model.layers:
        if _is_prunable(layer, dense_layers):
            statistics = output_statistics(model, layer.name)
            scores[layer.name] = _kernel_l1(layer) if statistics is None else statistics[1]
    return scores


def mean_outputs(model: keras.Model, filters: Sequence[tuple[str, int]]) -> dict[tuple[str, int], float]:
    """(conv, filter) -> the constant a removed filter is replaced by: its mean output
    (``output_statistics``); for a conv without a BN, what it outputs with its kernel gone (its bias,
    activated)."""
    means = {}
    for conv in {conv for conv, _ in filters}:
        statistics = output_statistics(model, conv)
        if statistics is None:
            layer = model.get_layer(conv)
            bias = keras.backend.get_value(layer.bias) if layer.use_bias else np.zeros(_filters(layer), np.float32)
            activation = _activation_after(layer)
            mean = np.asarray(activation(bias[None])[0]) if activation is not None else bias
        else:
            mean = statistics[0]
        means.update({(c, f): float(mean[f]) for c, f in filters if c == conv})
    return means


def _filters(layer) -> int:
    shape = layer.weights[0].shape  # (h, w, in, out); depthwise (h, w, in, multiplier)
    return int(shape[-1]) * (int(shape[-2]) if isinstance(layer, keras.layers.DepthwiseConv2D) else 1)


def prunable_filters(model: keras.Model, *, dense_layers: Sequence[str]) -> int:
    """Filters of every conv but ``dense_layers``."""
    return sum(_filters(layer) for layer in model.layers if _is_prunable(layer, dense_layers))


def removal_counts(clusters: Sequence[FilterCluster], *, target: float, total: int) -> tuple[int, ...]:
    """Units to remove from each cluster so about ``target`` of ``total`` filters go.

    Each cluster keeps a multiple of its ``step`` of units (or all its units when it has fewer
    than a step): it starts at the removal just under its share, then the clusters furthest
    under their share remove one step more while that brings the total closer to the target.
    """
    size = [sum(len(u) for u in c.units) / max(1, len(c.units)) for c in clusters]  # filters per unit
    ideal = [target * len(c.units) for c in clusters]

    def allowed(c: FilterCluster) -> list[int]:  # removals that leave a multiple of the step
        return sorted(len(c.units) - kept for kept in range(c.step, len(c.units) + 1, c.step))

    options = [allowed(c) or [0] for c in clusters]
    removed = [max([r for r in opts if r <= want] or [0]) for opts, want in zip(options, ideal)]
    deficit = target * total - sum(r * s for r, s in zip(removed, size))
    while True:
        bumps = [(i, next(r for r in options[i] if r > removed[i])) for i in range(len(clusters))
                 if removed[i] < options[i][-1]]
        better = [(i, r) for i, r in bumps if abs(deficit - (r - removed[i]) * size[i]) < abs(deficit)]
        if not better:
            return tuple(removed)
        i, r = max(better, key=lambda b: (ideal[b[0]] - removed[b[0]]) / clusters[b[0]].step)
        deficit -= (r - removed[i]) * size[i]
        removed[i] = r


@dataclass(frozen=True)
class FilterPlan:
    """What filter pruning removes at its target."""

    clusters: tuple[FilterCluster, ...]
    removals: tuple[int, ...]  # units removed from each cluster at the target
    target: float

    @property
    def removable(self) -> int:
        """Filters the family lets go (every conv's but the dense layers' and those the ties keep):
        what ``target_sparsity`` is a fraction of."""
        return sum(len(unit) for cluster in self.clusters for unit in cluster.units)


def filter_widths(wide: keras.Model, thin: keras.Model, *, target: float,
                  dense_layers: Sequence[str]) -> dict[str, list[float]]:
    """Conv -> ``[filters, the width the target asked for, the width kept]``: the rounding, recorded."""
    return {layer.name: [_filters(layer), round(_filters(layer) * (1 - target), 2), _filters(thin.get_layer(layer.name))]
            for layer in wide.layers if _is_prunable(layer, dense_layers)}


class FilterMasks:
    """The filters masked so far, applied to a model's weights before every step."""

    def __init__(self, model: keras.Model, plan: FilterPlan, *, dense_layers: Sequence[str],
                 absorb: Callable[[keras.Model, dict[tuple[str, int], float]], None] | None):
        """``absorb`` is the family's ``absorb_constants``; None zeroes the masked outputs without folding
        their means into the readers (``benchmarks/filter_pruning_accuracy.py`` measures what that costs)."""
        self.model, self.plan, self.dense_layers, self.absorb = model, plan, tuple(dense_layers), absorb
        self.masked: list[list[int]] = [[] for _ in plan.clusters]  # unit indices, per cluster
        self._vectors: dict[str, tf.Tensor] = {}

    def update(self, fraction: float) -> None:
        """Mask ``fraction`` of each cluster's final removal: its lowest-ranked unmasked units next, each
        newly masked filter's mean output folded into its readers (``absorb``) while it still has it."""
        scores = filter_scores(self.model, dense_layers=self.dense_layers)
        before = set(self.removed())
        for cluster, final, masked in zip(self.plan.clusters, self.plan.removals, self.masked):
            want = min(final, math.floor(final * fraction + 1e-9))
            if want <= len(masked):
                continue
            rest = [u for u in range(len(cluster.units)) if u not in set(masked)]
            rest.sort(key=lambda u: float(np.mean([scores[conv][f] for conv, f in cluster.units[u]])))
            masked.extend(rest[: want - len(masked)])
        newly = [member for member in self.removed() if member not in before]
        if newly and self.absorb is not None:  # before apply zeroes them: their means, folded into the readers
            self.absorb(self.model, mean_outputs(self.model, newly))
        keep: dict[str, np.ndarray] = {}
        for conv, f in self.removed():
            layer = self.model.get_layer(conv)
            keep.setdefault(conv, np.ones(int(layer.weights[0].shape[-1]), np.float32))[f] = 0.0
        self._vectors = {conv: tf.constant(vector) for conv, vector in keep.items()}

    def apply(self) -> None:
        """Zero the masked filters' kernel, bias and BN scale and offset: their outputs are then zero after
        the activation (the family's filter_clusters keep the filters whose activation is not zero at zero)."""
        for conv, keep in self._vectors.items():
            layer = self.model.get_layer(conv)
            variables = list(layer.weights)  # kernel (..., out), bias (out,)
            norm = _norm_after(layer)
            if norm is not None:
                variables += [norm.gamma, norm.beta]
            for variable in variables:
                variable.assign(variable * keep)

    def removed(self) -> list[tuple[str, int]]:
        return [member for cluster, masked in zip(self.plan.clusters, self.masked)
                for u in masked for member in cluster.units[u]]


def filter_plan(model: keras.Model, spec: PruningSpec, *, family: ModelFamily) -> FilterPlan:
    """Which units of ``model`` go at ``spec``'s target (ranked on ``model``'s weights now)."""
    dense = family.dense_layers(model)
    clusters = tuple(family.filter_clusters(model, filter_scores(model, dense_layers=dense)))
    total = sum(len(unit) for cluster in clusters for unit in cluster.units)
    return FilterPlan(clusters, removal_counts(clusters, target=spec.sparsity, total=total), spec.sparsity)


def schedule_hook(masks: FilterMasks, spec: PruningSpec, *, steps: int):
    """``train``'s ``on_step``: masks as the schedule says at each step, and the whole plan at the end."""
    schedule = SCHEDULES[spec.schedule].build(spec, pruning_timing(steps=steps))

    def on_step(step: int) -> None:
        if step >= steps:
            masks.update(1.0)  # the target, whatever the schedule reached
        else:
            update, sparsity = schedule(tf.constant(step, tf.int64))
            if bool(update):
                masks.update(float(sparsity) / spec.sparsity)
        masks.apply()

    return on_step


def measured_filter_sparsity(wide: keras.Model, thin: keras.Model, plan: FilterPlan, *,
                             dense_layers: Sequence[str]) -> float:
    """Fraction of the plan's removable filters that ``thin`` no longer has, counted on the models."""
    removed = prunable_filters(wide, dense_layers=dense_layers) - prunable_filters(thin, dense_layers=dense_layers)
    return removed / max(1, plan.removable)


def remove_filters_and_fine_tune(model: keras.Model, spec: PruningSpec, *, family: ModelFamily, steps: int,
                                 train_kwargs: dict) -> tuple[keras.Model, float]:
    """Fine-tune a copy of ``model`` ``steps`` steps while masking filters as ``spec`` says; return the
    thinner network without them, and the fraction of removable filters removed.

    ``train_kwargs`` go to ``search.train.train`` (heads, images, boxes, classes, batch size, rate, seed,
    ``distill``, whose teacher may be ``model`` itself: only the copy is masked).
    """
    from search.train import train

    wide = keras.models.clone_model(model)  # the caller's model is never touched
    wide.set_weights(model.get_weights())
    dense = family.dense_layers(wide)
    plan = filter_plan(wide, spec, family=family)
    masks = FilterMasks(wide, plan, dense_layers=dense, absorb=family.absorb_constants)
    train(wide, steps=steps, on_step=schedule_hook(masks, spec, steps=steps), **train_kwargs)
    thin = family.thin(wide, masks.removed())
    return thin, measured_filter_sparsity(wide, thin, plan, dense_layers=dense)
