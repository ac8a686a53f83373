"""Filter pruning: choose filters, mask them over the fine-tune as the schedule says, then remove them.

The network family decides which filters can only go together (``ModelFamily.filter_clusters``:
shortcut operands, the halves of a channel split, the heads that stay), which convs read each
filter (``ModelFamily.channel_readers``) and how to rebuild the network without them
(``ModelFamily.thin``); this module decides how many, which and when.

- **How many**: ``target_sparsity`` of the removable filters (every conv's but the family's dense
  layers' and those its ties keep, e.g. a logistic conv's; for the family cfgs, every filter of
  every conv but the heads), spread evenly over the clusters, each keeping a multiple of its ``step`` of units so
  kept widths are multiples of 8 where the ties allow; the rounding is spread (largest remainder)
  so the total stays within a few filters of the target. ``filter_widths`` records it. (One
  ranking over all layers instead, measured: worse at every target; see ``benchmarks/README.md``.)
- **Which**: those the filters that stay can best stand in for, on real images
  (``search.filter_replacement.choose_units``): at each mask update, every reader's input
  statistics over ``STATISTICS_IMAGES`` training images, then, greedily, the unit whose channels
  the kept ones predict best, weighed by how strongly their readers use them.
- **When**: the trial's TFMOT schedule, read at each step (``search.pruning.pruning_timing``):
  where it updates masks, ``schedule sparsity / target`` of each cluster's final removal is
  masked (once masked, always masked). Each newly masked filter's output is replaced in its
  readers by its least-squares fit on the kept channels (``fold_replacements``: their kernels and
  bias or BN moving mean take it), then its kernel, bias and BN scale and offset are zeroed before
  every step, so its output is zero after its activation and the rest of the network learns
  without it. Zeroing alone drops what the readers were trained with; folding only its mean kept
  10% of the official weights' filters at coco128 AP50 0.26 of 0.50, the fit at 0.43.
- **Remove**: at the end the masked filters are removed (``ModelFamily.thin``): the thinner
  network computes exactly what the masked one does.

Channel splits pair the j-th channel of one half with the j-th of the other by ``filter_scores``
(the spread of each filter's output from its BN's statistics, no image needed), so the halves stay
even and alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search.compat import keras, tf
from search.filter_replacement import choose_units, fold_replacements, norm_after, reader_statistics
from search.models.family import FilterCluster, ModelFamily
from search.pruning import SCHEDULES, PruningSpec, pruning_timing

# Training images the stand-ins are fitted on at each mask update: 64 at 416 px give the deepest
# readers (13 x 13 maps) ~10,800 samples for at most 512 channels; a forward pass over them is a
# few seconds there and well under one at the search's resolutions.
STATISTICS_IMAGES = 64


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
    norm = norm_after(layer)
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

    def __init__(self, model: keras.Model, plan: FilterPlan, *,
                 readers: Mapping[tuple[str, int], Sequence[tuple[str, int]]], images: np.ndarray):
        """``readers``: the family's ``channel_readers(model)``; ``images``: uint8 training images, of which
        ``STATISTICS_IMAGES`` (evenly spaced) show the filters at work at each mask update."""
        self.model, self.plan, self.readers = model, plan, readers
        picked = np.linspace(0, len(images) - 1, min(len(images), STATISTICS_IMAGES)).round().astype(int)
        self.images = images[np.unique(picked)].astype(np.float32) / 255.0
        self.masked: list[list[int]] = [[] for _ in plan.clusters]  # unit indices, per cluster
        self._vectors: dict[str, tf.Tensor] = {}

    def update(self, fraction: float) -> None:
        """Mask ``fraction`` of each cluster's final removal: the units the kept filters stand in for best
        next, each newly masked filter's least-squares stand-in folded into its readers while it still has
        its output (``search.filter_replacement``)."""
        more = [max(0, min(final, math.floor(final * fraction + 1e-9)) - len(masked))
                for final, masked in zip(self.plan.removals, self.masked)]
        if not any(more):
            return
        before = self.removed()
        gone = set(before)
        statistics = reader_statistics(self.model, {r for where in self.readers.values() for r, _ in where},
                                       self.images)
        open_units = [sorted(set(range(len(cluster.units))) - set(masked))
                      for cluster, masked in zip(self.plan.clusters, self.masked)]
        chosen = choose_units(self.model, [[cluster.units[u] for u in units]
                                           for cluster, units in zip(self.plan.clusters, open_units)],
                              more, readers=self.readers, statistics=statistics, gone=before)
        for masked, units, picks in zip(self.masked, open_units, chosen):
            masked.extend(units[i] for i in picks)
        newly = [member for member in self.removed() if member not in gone]
        fold_replacements(self.model, newly, readers=self.readers, statistics=statistics, gone=before)
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
            norm = norm_after(layer)
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
    masks = FilterMasks(wide, plan, readers=family.channel_readers(wide), images=train_kwargs["images"])
    train(wide, steps=steps, on_step=schedule_hook(masks, spec, steps=steps), **train_kwargs)
    thin = family.thin(wide, masks.removed())
    return thin, measured_filter_sparsity(wide, thin, plan, dense_layers=dense)
