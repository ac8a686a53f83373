"""What every network family provides (``ModelFamily``), and the YOLO head layout (``YoloHeads``).

The search, the loss, the decoder, pruning, QAT, the stage cache and the export read a network
only through these two: a family's anchors, strides and which layers stay dense are its data, not
constants somebody imports. Both are plain frozen values, TensorFlow-free, so the space validator
can read the registry; a family's functions import TensorFlow when they are called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class YoloHeads:
    """The raw YOLO heads a model outputs, in the model's output order, and how to decode them.

    Head ``k`` is a ``(N, r/strides[k], r/strides[k], channels)`` tensor; each of its
    ``anchors_per_head`` anchors has ``tx, ty, tw, th, objectness, class_0 .. class_{C-1}``
    before any activation (after the cfg's logistic for ``new_coords`` heads). ``anchors`` are
    ``(w, h)`` in pixels of the network input (as Darknet keeps them, whatever the input size);
    ``masks[k]`` are the indices of head ``k``'s anchors.
    ``iou_thresh`` and ``ignore_thresh`` are the ``[yolo]`` training settings: a box is also
    assigned to every masked anchor whose shape IoU exceeds ``iou_thresh``, and a prediction that
    overlaps a truth by more than ``ignore_thresh`` is not penalised as a negative.
    """

    anchors: tuple[tuple[int, int], ...]
    masks: tuple[tuple[int, ...], ...]
    strides: tuple[int, ...]
    scale_x_y: float  # box centres may reach (scale_x_y - 1) / 2 of a cell past their cell
    num_classes: int
    iou_thresh: float
    ignore_thresh: float
    # [yolo] new_coords=1 (YOLOv7 style): the heads are probabilities already (a logistic conv), and
    # x = (col + tx * s - (s - 1) / 2) / grid, w = (2 * tw)^2 * anchor_w / resolution
    new_coords: bool = False

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, but got {self.num_classes}.")
        if len(self.masks) != len(self.strides) or not self.masks:
            raise ValueError(f"masks and strides must give each head one entry, but got {len(self.masks)} and {len(self.strides)}.")
        if len({len(mask) for mask in self.masks}) != 1:
            raise ValueError(f"every head must have as many anchors as the others, but got masks {self.masks}.")
        if not all(0 <= a < len(self.anchors) for mask in self.masks for a in mask):
            raise ValueError(f"masks must index the {len(self.anchors)} anchors, but got {self.masks}.")

    @property
    def anchors_per_head(self) -> int:
        return len(self.masks[0])

    @property
    def channels(self) -> int:
        """Channels of each head: every anchor's 4 box values, objectness and class logits."""
        return self.anchors_per_head * (5 + self.num_classes)

    def grids(self, resolution: int) -> tuple[int, ...]:
        """Each head's grid size (cells per side) at ``resolution`` pixels."""
        return tuple(resolution // stride for stride in self.strides)

    def head_anchors(self, head: int) -> tuple[tuple[int, int], ...]:
        """Head ``head``'s anchors, ``(w, h)`` in pixels, in the order of its channels."""
        return tuple(self.anchors[a] for a in self.masks[head])

    def card(self) -> dict[str, Any]:
        """The export card's ``outputs`` section (without the class names, which the data has)."""
        count = _COUNT_WORDS.get(len(self.strides), str(len(self.strides)))
        strides = " then ".join(str(s) for s in self.strides)
        return {
            "heads": f"{count} raw YOLO heads, stride {strides} (identify by grid size)",
            "channels": f"{self.anchors_per_head} anchors x (tx, ty, tw, th, objectness, class "
                        f"{'probabilities' if self.new_coords else 'logits'})",
            "anchors_pixels": self.anchors,
            "masks": self.masks,
            "strides": self.strides,
            "scale_x_y": self.scale_x_y,
            **({"new_coords": True} if self.new_coords else {}),
        }


@dataclass(frozen=True)
class FilterCluster:
    """Filters that filter pruning (``search.prune``) may remove, as units that go whole.

    A unit is the set of ``(conv layer name, filter index)`` whose channels the network ties
    together: both operands of a shortcut, the paired filters of an equal channel split. Removing
    a unit zeroes its filters' outputs after their activation, and the family's ``thin`` then drops
    them with the matching input channels of every reader. Convs that share a unit form one
    cluster; keeping a multiple of ``step`` of its units keeps each of its convs' widths a multiple
    of 8 (XNNPACK's channel tile) where the ties allow it.
    """

    units: tuple[tuple[tuple[str, int], ...], ...]
    step: int  # units kept come in multiples of this

    @property
    def convs(self) -> tuple[str, ...]:
        return tuple(sorted({conv for unit in self.units for conv, _ in unit}))


@dataclass(frozen=True)
class ModelFamily:
    """One network family: how to build, describe, rebuild and import it, and what it needs kept.

    ``model`` below is a Keras model the family's ``build`` (or ``from_architecture`` or
    ``load_pretrained``) made, possibly with its weights changed since.
    """

    name: str  # the space file's model.name
    display_name: str  # names the network on the export card ("model")
    description: str  # one line, for listings
    # (*, num_classes, resolution) -> keras.Model: random weights; resolution None takes any size
    build: Callable[..., Any]
    # num_classes -> YoloHeads: the outputs of every model of this family at that class count
    heads: Callable[[int], YoloHeads]
    # model -> Conv2D layer names pruning must leave dense (their channels are the outputs)
    dense_layers: Callable[[Any], tuple[str, ...]]
    # model -> the Conv2D layers whose outputs are the detection heads, in the model's output order
    # (quantization recipes that keep the detection outputs at higher precision read them here)
    head_layers: Callable[[Any], tuple[str, ...]]
    # model -> names of the Lambda layers that take the second half of the channels (CSP split),
    # which QAT replaces by a serialisable layer; any other Lambda is refused
    channel_split_layers: Callable[[Any], tuple[str, ...]]
    # model -> JSON-able dict from which from_architecture rebuilds the same network
    architecture: Callable[[Any], dict[str, Any]]
    # (architecture, *, resolution) -> keras.Model with the layer names and weight shapes of the original
    from_architecture: Callable[..., Any]
    # (model, scores: conv name -> per-filter score) -> the FilterClusters filter pruning may remove;
    # the scores only pair filters across an equal channel split (best with best)
    filter_clusters: Callable[..., tuple[FilterCluster, ...]]
    # (model, removed: a set of (conv name, filter)) -> the thinner network with the remaining weights,
    # computing what ``model`` computes with the removed filters' outputs zero after their activation
    thin: Callable[..., Any]
    # model -> (conv name, filter) -> ((reader conv name, input position), ...): the convs reading each
    # filter's output and where; filter pruning fits a removed filter's stand-in on those readers' inputs
    # and folds it into them (search.filter_replacement)
    channel_readers: Callable[[Any], dict[tuple[str, int], tuple[tuple[str, int], ...]]]
    # num_classes -> the export card's "outputs" section
    card: Callable[[int], dict[str, Any]]
    # (cfg_path, weights_path) -> num_classes: checks pretrained files without building anything
    check_files: Callable[[Any, Any], int]
    # (cfg_path, weights_path, *, resolution) -> (model, num_classes)
    load_pretrained: Callable[..., tuple[Any, int]]
    # model -> (Darknet cfg text, Darknet .weights bytes): the model as Darknet and OpenCV read it
    darknet_files: Callable[[Any], tuple[str, bytes]]
    # cfg_path -> this family with its networks made from that Darknet cfg (a space's model.cfg)
    with_cfg: Callable[[Any], "ModelFamily"]
