"""What a removed filter leaves behind: each reader gets a least-squares stand-in for it, folded into its weights.

Filter pruning (``search.prune_filters``) zeroes a filter's output after its activation, and the
family's ``thin`` then drops it. Zero is a poor stand-in: the convs reading the filter were trained
with its output, and much of it is predictable from the filters that stay (a trained detector's
channels are strongly correlated). So, for every conv that reads a removed channel (a *reader*), the
removed input channels ``R`` are fitted on the kept ones ``K`` over real images, ``x_R ~ M x_K + c``
(ridge least squares on the reader's input statistics), and the fit is folded into the reader:
its kernel at ``K`` gains ``M`` times its kernel at ``R``, its bias (or BN moving mean) takes ``c``'s
contribution. The reader then computes what it computed with the removed channels, up to the
fit's residual (and the zero padding at the borders, where ``c`` is not read). On the default
family's official weights with 10% of the filters masked, folding only the mean (``M = 0``) kept
coco128 AP50 at 0.26 of 0.50; this fold keeps 0.43 (``benchmarks/filter_pruning_accuracy.py``).

Which units go is chosen by the same statistics (``choose_units``): greedily, the unit whose
channels the kept ones predict best, weighed by how strongly the readers use them, i.e. the
smallest ``sum over readers of |reader kernel at p|^2 / precision[p, p]``, where
``1 / precision[p, p]`` is the variance of channel ``p`` left unexplained by the other channels
still kept (updated after each choice, so two copies of one channel do not both go).
Everything here is Keras and numpy; which conv reads which channel is the family's
(``ModelFamily.channel_readers``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search.compat import keras, tf

Filter = tuple[str, int]  # (conv layer name, filter index)
Readers = Mapping[Filter, Sequence[tuple[str, int]]]  # filter -> (reader conv name, its input position), ...

STATISTICS_BATCH = 8  # images per forward pass while gathering statistics
# Ridge, relative to the mean channel variance: a floor, plus the predictors-to-samples ratio, which
# shrinks the fit where a deep, narrow map (9 pixels per image at 96 px) gives few samples per weight.
RIDGE_FLOOR = 1e-3


def norm_after(layer):
    """The BatchNormalization reading ``layer``'s output alone, or None."""
    nodes = layer.outbound_nodes
    if len(nodes) == 1 and isinstance(nodes[0].outbound_layer, keras.layers.BatchNormalization):
        return nodes[0].outbound_layer
    return None


@dataclass(frozen=True)
class InputStatistics:
    """Mean and covariance of a reader's input channels over every pixel of the images seen."""

    mean: np.ndarray  # (channels,)
    covariance: np.ndarray  # (channels, channels)
    samples: int  # pixels

    def ridge(self, predictors: int) -> float:
        scale = float(np.mean(np.diag(self.covariance))) or 1.0
        return scale * (RIDGE_FLOOR + predictors / max(1, self.samples))


def _reader_input(model: keras.Model, reader: str):
    """The tensor ``reader`` convolves, before any explicit zero padding (the padding is not data)."""
    layer = model.get_layer(reader)
    inbound = layer.inbound_nodes[0].inbound_layers
    if isinstance(inbound, keras.layers.ZeroPadding2D):
        return inbound.input
    return layer.input


def reader_statistics(model: keras.Model, readers: Collection[str], images: np.ndarray) -> dict[str, InputStatistics]:
    """Each reader's input statistics over ``images`` (float, the network's input scale), inference mode."""
    names = sorted(readers)
    probe = keras.Model(model.input, [_reader_input(model, name) for name in names])
    sums = {name: 0.0 for name in names}
    grams = {name: 0.0 for name in names}
    samples = {name: 0 for name in names}
    for start in range(0, len(images), STATISTICS_BATCH):
        outputs = probe(images[start : start + STATISTICS_BATCH], training=False)
        for name, x in zip(names, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            x = tf.reshape(x, (-1, x.shape[-1]))
            sums[name] = sums[name] + tf.reduce_sum(x, axis=0).numpy().astype(np.float64)
            grams[name] = grams[name] + tf.matmul(x, x, transpose_a=True).numpy().astype(np.float64)
            samples[name] += int(x.shape[0])
    statistics = {}
    for name in names:
        mean = sums[name] / samples[name]
        statistics[name] = InputStatistics(mean, grams[name] / samples[name] - np.outer(mean, mean), samples[name])
    return statistics


def _weight_energy(model: keras.Model, reader: str) -> np.ndarray:
    """Per input channel: the squared norm of ``reader``'s kernel there, scaled by its BN as the BN scales the output."""
    layer = model.get_layer(reader)
    kernel = np.asarray(layer.kernel, np.float64)
    norm = norm_after(layer)
    if norm is not None:
        gamma, variance = np.asarray(norm.gamma, np.float64), np.asarray(norm.moving_variance, np.float64)
        kernel = kernel * (gamma / np.sqrt(variance + norm.epsilon))
    return (kernel**2).sum(axis=(0, 1, 3))


class _Precisions:
    """Per reader, the precision (inverse covariance) of its input over the channels still kept."""

    def __init__(self, statistics: Mapping[str, InputStatistics], gone: Mapping[str, Collection[int]]):
        self.matrices = {}
        for name, s in statistics.items():
            kept = np.ones(len(s.mean), bool)
            kept[list(gone.get(name, ()))] = False
            covariance = s.covariance[np.ix_(kept, kept)]
            inverse = np.linalg.inv(covariance + s.ridge(int(kept.sum())) * np.eye(int(kept.sum())))
            full = np.zeros_like(s.covariance)
            full[np.ix_(kept, kept)] = inverse
            self.matrices[name] = full

    def unexplained(self, reader: str, position: int) -> float:
        """Variance of the channel at ``position`` that the other kept channels do not explain."""
        return 1.0 / self.matrices[reader][position, position]

    def remove(self, reader: str, position: int) -> None:
        """Drop a channel from the kept ones: the precision of the rest is a rank-one update."""
        p = self.matrices[reader]
        column = p[:, position].copy()
        p -= np.outer(column, column) / column[position]
        p[position, :] = 0.0
        p[:, position] = 0.0


def reader_positions(filters: Collection[Filter], readers: Readers) -> dict[str, set[int]]:
    """Reader -> the input positions where it reads ``filters``."""
    positions: dict[str, set[int]] = {}
    for member in filters:
        for reader, position in readers.get(member, ()):
            positions.setdefault(reader, set()).add(position)
    return positions


def choose_units(model: keras.Model, candidates: Sequence[Sequence[Sequence[Filter]]], counts: Sequence[int], *,
                 readers: Readers, statistics: Mapping[str, InputStatistics],
                 gone: Collection[Filter]) -> list[list[int]]:
    """Per cluster, which ``counts[i]`` of its ``candidates[i]`` units go, cheapest first (see the module doc).

    ``gone``: the filters removed already (no longer predictors). One greedy pass over every cluster,
    since clusters share readers.
    """
    energy = {name: _weight_energy(model, name) for name in statistics}
    precisions = _Precisions(statistics, reader_positions(gone, readers))

    def cost(unit: Sequence[Filter]) -> float:
        return sum(energy[r][p] * precisions.unexplained(r, p) for member in unit for r, p in readers.get(member, ()))

    chosen: list[list[int]] = [[] for _ in candidates]
    open_units = {(c, u) for c, units in enumerate(candidates) if counts[c] > 0 for u in range(len(units))}
    while open_units:
        c, u = min(open_units, key=lambda cu: (cost(candidates[cu[0]][cu[1]]), cu))
        chosen[c].append(u)
        open_units.discard((c, u))
        if len(chosen[c]) >= counts[c]:
            open_units = {(k, v) for k, v in open_units if k != c}
        for reader, position in (rp for member in candidates[c][u] for rp in readers.get(member, ())):
            precisions.remove(reader, position)
    return chosen


def fold_replacements(model: keras.Model, removed: Collection[Filter], *, readers: Readers,
                      statistics: Mapping[str, InputStatistics], gone: Collection[Filter] = ()) -> None:
    """Fold the least-squares stand-ins of ``removed`` into their readers, in place (see the module doc).

    ``gone``: filters removed before, already zero, so neither fitted again nor used as predictors.
    ``statistics`` must hold every reader of ``removed`` (``reader_statistics`` on the model as it is now).
    """
    earlier = reader_positions(gone, readers)
    for reader, positions in reader_positions(removed, readers).items():
        s = statistics[reader]
        fitted = sorted(positions)
        kept = [p for p in range(len(s.mean)) if p not in positions and p not in earlier.get(reader, ())]
        lhs = s.covariance[np.ix_(kept, kept)] + s.ridge(len(kept)) * np.eye(len(kept))
        coefficients = np.linalg.solve(lhs, s.covariance[np.ix_(kept, fitted)])  # x_R ~ coefficients.T x_K + offset
        offset = s.mean[fitted] - coefficients.T @ s.mean[kept]
        layer = model.get_layer(reader)
        kernel = np.asarray(layer.kernel)
        read = kernel[:, :, fitted, :].astype(np.float64)
        kernel = kernel.copy()
        kernel[:, :, kept, :] += np.einsum("kr,hwro->hwko", coefficients, read).astype(np.float32)
        layer.kernel.assign(kernel)
        shift = np.einsum("hwro,r->o", read, offset).astype(np.float32)  # what the offset adds to each output
        norm = norm_after(layer)
        if norm is not None:  # BN subtracts its moving mean: the same shift, taken from it
            norm.moving_mean.assign(np.asarray(norm.moving_mean) - shift)
        else:
            layer.bias.assign(np.asarray(layer.bias) + shift)
