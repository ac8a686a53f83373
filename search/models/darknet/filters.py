"""Filter pruning of a Darknet network: which filters must go together, and the thinner network.

``filter_clusters(network, scores)`` follows every channel from the conv that makes it through
every layer that moves it (max-pool, upsample, routes, shortcuts) to the convs that read it, and
groups the filters into units that can only be removed whole (``search.models.family.FilterCluster``).
``thin_model(model, network, removed)`` writes the cfg with fewer filters, builds it, and copies
the remaining weights: a thinner network is just another cfg, so the stage cache and the export
take it as they take any. ``channel_readers(network)`` says which convs read each filter, and
where in their input: filter pruning fits a removed filter's stand-in there
(``search.filter_replacement``).

What ties filters, and why:

- a ``[shortcut]`` adds channel ``i`` of one operand to channel ``i`` of the other: both go or
  both stay, so the operands keep identical channel sets;
- a ``[route] groups=G`` split takes one of ``G`` equal runs of its input: every run must keep as
  many channels as the others (the CSP split stays even), so the ``j``-th best channel of each run
  (by ``scores``, the unit's mean) go together;
- a grouped or depthwise conv mixes its channels group by group: its inputs and its filters stay;
- a head conv (before a ``[yolo]``) keeps its filters: they are the box values and class scores;
- a removed channel must read as zero downstream, so a conv or shortcut whose activation is not
  zero at zero (``logistic``) keeps its channels.

The rebuild is exact: the thinner network computes what the wide one computes with the removed
channels set to zero after their activation (a zero channel adds nothing to the convs reading it,
and max-pool, upsample and routes only move it). TensorFlow-free until a model is built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from search.models.darknet.cfg import Cfg
from search.models.darknet.network import IMAGE, Conv, Network, Route, Shortcut, read_network
from search.models.family import FilterCluster

Channel = tuple[int, int]  # (Darknet index of the conv that makes it, its filter)
WIDTH_MULTIPLE = 8  # kept widths in multiples of XNNPACK's channel tile where the ties allow
ZERO_AT_ZERO = ("linear", "leaky", "relu", "mish", "swish")  # activations that keep a zero channel zero


class _Ties:
    """Union-find over channels, with the channels that must stay."""

    def __init__(self):
        self.parent: dict[Channel, Channel] = {}
        self.fixed: set[Channel] = set()

    def add(self, channel: Channel) -> None:
        self.parent.setdefault(channel, channel)

    def find(self, channel: Channel) -> Channel:
        while self.parent[channel] != channel:
            self.parent[channel] = self.parent[self.parent[channel]]
            channel = self.parent[channel]
        return channel

    def union(self, a: Channel, b: Channel) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_b] = root_a

    def fix(self, channels) -> None:
        self.fixed.update(c for c in channels if c is not None)

    def units(self) -> dict[Channel, list[Channel]]:
        """Root -> members of every unit none of whose members must stay."""
        units: dict[Channel, list[Channel]] = {}
        for channel in self.parent:
            units.setdefault(self.find(channel), []).append(channel)
        stays = {self.find(c) for c in self.fixed}
        return {root: sorted(members) for root, members in units.items() if root not in stays}


def _trace(network: Network, ties: _Ties) -> tuple[dict[int, list], list[tuple[list, int]]]:
    """Each layer's output channels as the conv channels they are (None: the image's), and the splits."""
    dense = set(network.dense_layers)
    origins: dict[int, list] = {IMAGE: [None, None, None]}
    splits: list[tuple[list, int]] = []
    for layer in network.layers:
        op, inputs = layer.op, [origins[i] for i in layer.inputs]
        if isinstance(op, Conv):
            own = [(layer.index, f) for f in range(op.filters)]
            for channel in own:
                ties.add(channel)
            if op.groups > 1:
                ties.fix(inputs[0] + own)
            if f"conv_{layer.index}" in dense or op.activation not in ZERO_AT_ZERO:
                ties.fix(own)
            origins[layer.index] = own
        elif isinstance(op, Route) and op.groups > 1:
            source, run = inputs[0], len(inputs[0]) // op.groups
            splits.append((source, op.groups))
            origins[layer.index] = source[run * op.group_id : run * (op.group_id + 1)]
        elif isinstance(op, Route):
            origins[layer.index] = [c for source in inputs for c in source]
        elif isinstance(op, Shortcut):
            first, second = inputs
            for a, b in zip(first, second):
                if a is None or b is None:
                    ties.fix((a, b))
                else:
                    ties.union(a, b)
            if op.activation not in ZERO_AT_ZERO:
                ties.fix(first + second)
            origins[layer.index] = list(first)
        else:  # max-pool, upsample, yolo: the same channels
            origins[layer.index] = list(inputs[0])
    return origins, splits


def _runs(source: list, groups: int) -> list[list]:
    run = len(source) // groups
    return [source[g * run : (g + 1) * run] for g in range(groups)]


def _pair_splits(splits: list[tuple[list, int]], ties: _Ties, score) -> None:
    """Tie the j-th best channel of every run of each split, so the runs keep equal widths."""
    for source, groups in splits:
        if any(c is None for c in source):
            ties.fix(source)
            continue
        for matched in zip(*(sorted(run, key=score, reverse=True) for run in _runs(source, groups))):
            for channel in matched[1:]:
                ties.union(matched[0], channel)
    for source, groups in splits:  # a channel met twice in one split cannot be balanced: it stays
        counts = [Counter(ties.find(c) for c in run if c is not None) for run in _runs(source, groups)]
        for root in set().union(*counts):
            if len({count[root] for count in counts}) > 1:
                ties.fix([root])


def _unit_scores(ties: _Ties, scores: Mapping[str, np.ndarray]):
    """channel -> the mean score of its unit (as the ties stand now)."""
    members: dict[Channel, list[float]] = {}
    for conv, f in ties.parent:
        score = scores.get(f"conv_{conv}")  # convs that keep every filter need none
        members.setdefault(ties.find((conv, f)), []).append(0.0 if score is None else float(score[f]))
    means = {root: float(np.mean(values)) for root, values in members.items()}
    return lambda channel: means[ties.find(channel)]


def _cluster(units: list[list[Channel]]) -> list[FilterCluster]:
    """Units grouped by the convs they share, each cluster with its width step."""
    convs = {conv for unit in units for conv, _ in unit}
    group = _Ties()
    for conv in convs:
        group.add((conv, 0))
    for unit in units:
        for conv, _ in unit[1:]:
            group.union((unit[0][0], 0), (conv, 0))
    by_root: dict[Channel, list[list[Channel]]] = {}
    for unit in units:
        by_root.setdefault(group.find((unit[0][0], 0)), []).append(unit)
    clusters = []
    for members in sorted(by_root.values()):
        per_conv = max(max(Counter(conv for conv, _ in unit).values()) for unit in members)
        named = tuple(tuple((f"conv_{conv}", f) for conv, f in unit) for unit in sorted(members))
        clusters.append(FilterCluster(named, step=max(1, WIDTH_MULTIPLE // per_conv)))
    return clusters


def filter_clusters(network: Network, scores: Mapping[str, np.ndarray]) -> tuple[FilterCluster, ...]:
    """The filters of ``network`` that may go, as units and clusters (see the module doc).

    ``scores`` maps each conv's Keras name to one score per filter (higher: more worth keeping);
    they only decide which channels of an equal split are paired.
    """
    ties = _Ties()
    _, splits = _trace(network, ties)
    _pair_splits(splits, ties, _unit_scores(ties, scores))
    return tuple(_cluster(list(ties.units().values())))


def _removed_channels(network: Network, removed: Collection[tuple[str, int]]) -> set[Channel]:
    """``removed`` as channels, checked: only whole units may go, or the rebuild would not be exact."""
    channels = {(int(name.split("_")[1]), int(f)) for name, f in removed}
    ties = _Ties()
    origins, splits = _trace(network, ties)
    kept_fixed = channels & ties.fixed
    broken = [(a, b) for layer in network.of(Shortcut)
              for a, b in zip(*(origins[i] for i in layer.inputs)) if (a in channels) != (b in channels)]
    uneven = [source for source, groups in splits
              if len({sum(c in channels for c in run) for run in _runs(source, groups)}) > 1]
    if kept_fixed or broken or uneven:
        raise ValueError(f"removed filters must be whole units of filter_clusters, but got {len(kept_fixed)} that must "
                         f"stay, {len(broken)} shortcut operands removed alone and {len(uneven)} uneven splits.")
    return channels


def thin_cfg(network: Network, removed: Collection[Channel]) -> Cfg:
    """``network``'s cfg with each conv's ``filters`` less its removed ones."""
    lost = Counter(conv for conv, _ in removed)
    cfg = network.cfg
    for conv in network.of(Conv):
        if lost[conv.index]:
            cfg = cfg.with_layer(conv.index, filters=conv.op.filters - lost[conv.index])
    return cfg


def _copy_conv(wide, thin, index: int, inputs: Sequence[int], outputs: Sequence[int], groups: int) -> None:
    """conv ``index``'s kept weights (and its BN's) from ``wide`` into ``thin``."""
    conv = wide.get_layer(f"conv_{index}")
    kernel, *bias = conv.get_weights()
    if groups == 1:  # grouped and depthwise convs keep all their channels (see _trace)
        kernel = kernel[:, :, list(inputs)][..., list(outputs)]
        bias = [b[list(outputs)] for b in bias]
    thin.get_layer(f"conv_{index}").set_weights([kernel, *bias])
    names = {layer.name for layer in wide.layers}
    if f"bn_{index}" in names:
        thin.get_layer(f"bn_{index}").set_weights([w[list(outputs)] for w in wide.get_layer(f"bn_{index}").get_weights()])


def thin_model(model, network: Network, removed: Collection[tuple[str, int]]):
    """``model`` (built from ``network``) without the ``removed`` ``(conv name, filter)``: a new, thinner model.

    Raises ``ValueError`` when ``removed`` is not made of whole units (``filter_clusters``).
    """
    from search.models.darknet.builder import build_model

    channels = _removed_channels(network, removed)
    origins, _ = _trace(network, _Ties())
    thin = build_model(read_network(thin_cfg(network, channels)), resolution=model.input_shape[1], name=model.name)
    for conv in network.of(Conv):
        outputs = [f for f in range(conv.op.filters) if (conv.index, f) not in channels]
        inputs = [p for p, c in enumerate(origins[conv.inputs[0]]) if c not in channels]
        _copy_conv(model, thin, conv.index, inputs, outputs, conv.op.groups)
    return thin


def channel_readers(network: Network) -> dict[tuple[str, int], tuple[tuple[str, int], ...]]:
    """(conv name, filter) -> ((reader conv name, input position), ...): every plain conv that reads the
    filter's output, through max-pool, upsample, routes and shortcuts, and where in its input.

    A shortcut's output position is listed under its first operand's filter (the ties remove both
    operands together); grouped convs are left out, since the ties keep their inputs.
    """
    origins, _ = _trace(network, _Ties())
    readers: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for layer in network.of(Conv):
        if layer.op.groups == 1:
            for position, channel in enumerate(origins[layer.inputs[0]]):
                if channel is not None:
                    readers.setdefault((f"conv_{channel[0]}", channel[1]), []).append((f"conv_{layer.index}", position))
    return {channel: tuple(where) for channel, where in readers.items()}
