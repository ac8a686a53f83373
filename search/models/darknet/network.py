"""A Darknet cfg checked and resolved into layers the builder can build (``read_network``).

Every section becomes a ``Layer``: its operation (``Conv``, ``MaxPool``, ``Route``, ``Shortcut``,
``Upsample``, ``Yolo``), the layers it reads, its output channels and its stride (how many input
pixels one of its cells spans). Everything is checked here, from the text alone, before any model
is built: a section or key the builder does not build, a value it cannot honour, routes that join
maps of different sizes, a head conv whose filters do not fit its ``[yolo]``. Each problem is one
``WeightsError`` line naming the file, the layer's index and type, and the key.

What Darknet computes is kept exactly: convolutions pad ``size/2`` (``pad=1``) or ``padding`` on
the top/left and read no further than they need on the bottom/right; max-pools pad ``size-1`` as
Darknet does (``stride=1`` keeps the size); BN divides by ``sqrt(var + 1e-5)``. The few layouts
whose padding TensorFlow cannot express exactly (e.g. a 3x3 stride-2 max-pool) are refused.
TensorFlow-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.errors import WeightsError
from search.models.darknet.cfg import Cfg, Section
from search.models.family import YoloHeads

ACTIVATIONS = ("linear", "leaky", "logistic", "relu", "mish", "swish")
IMAGE = -1  # the index ``Layer.inputs`` gives the network's input image


@dataclass(frozen=True)
class Conv:
    filters: int
    size: int
    stride: int
    padding: tuple[int, int] | None  # (top/left, bottom/right) zeros; None: TensorFlow's "same" (stride 1, odd size)
    groups: int
    batch_normalize: bool
    activation: str


@dataclass(frozen=True)
class MaxPool:
    size: int
    stride: int


@dataclass(frozen=True)
class Route:
    groups: int
    group_id: int


@dataclass(frozen=True)
class Shortcut:
    activation: str


@dataclass(frozen=True)
class Upsample:
    stride: int


@dataclass(frozen=True)
class Yolo:
    mask: tuple[int, ...]
    anchors: tuple[tuple[int, int], ...]
    classes: int
    scale_x_y: float
    new_coords: bool
    iou_thresh: float
    ignore_thresh: float


@dataclass(frozen=True)
class Layer:
    index: int  # Darknet's layer index: the builder names Keras layers after it (conv_3, route_4)
    op: Conv | MaxPool | Route | Shortcut | Upsample | Yolo
    inputs: tuple[int, ...]  # the layers it reads (IMAGE: the input)
    channels: int
    stride: int  # input pixels per output cell


# Keys each section may have: those the builder reads, and those it may ignore because they only
# steer Darknet's training or its display. Any other key is refused: it could change the network.
_READ = {
    "convolutional": {"batch_normalize", "filters", "size", "stride", "stride_x", "stride_y", "pad", "padding",
                      "groups", "activation"},
    "maxpool": {"size", "stride", "stride_x", "stride_y", "padding"},
    "route": {"layers", "groups", "group_id"},
    "shortcut": {"from", "activation"},
    "upsample": {"stride"},
    "yolo": {"mask", "anchors", "classes", "num", "scale_x_y", "new_coords", "iou_thresh", "ignore_thresh"},
}
_TRAINING_ONLY = {
    "convolutional": {"stopbackward", "dontload", "dontloadscales", "train_only_bn"},
    "yolo": {"jitter", "truth_thresh", "random", "resize", "cls_normalizer", "iou_normalizer", "obj_normalizer",
             "iou_loss", "iou_thresh_kind", "nms_kind", "beta_nms", "objectness_smooth", "max_delta",
             "label_smooth_eps", "focal_loss", "counters_per_class", "max", "uc_normalizer", "delta_normalizer",
             "thresh", "map", "show_details", "track_history_size", "sim_thresh", "dets_for_track",
             "dets_for_show", "track_ciou_norm"},
}
# Keys the builder supports at one value only (Darknet's default), e.g. no dilation.
_ONLY = {
    "convolutional": {"dilation": "1", "binary": "0", "xnor": "0", "antialiasing": "0", "deform": "0",
                      "coordconv": "0", "assisted_excitation": "0"},
    "maxpool": {"antialiasing": "0", "maxpool_depth": "0"},
    "upsample": {"scale": "1"},
    "shortcut": {"weights_type": "none", "weights_normalization": "none"},
}


def _check_keys(section: Section) -> None:
    only = _ONLY.get(section.kind, {})
    allowed = _READ[section.kind] | _TRAINING_ONLY.get(section.kind, set()) | set(only)
    for key, value in section.options.items():
        if key not in allowed:
            raise section.fail(key, f"is not a key the builder reads or can ignore in a [{section.kind}] section, "
                                    f"but got {key}={value}")
        if key in only and value != only[key]:
            raise section.fail(key, f"must be {only[key]} (the builder has no other), but got {value}")


def _stride(section: Section) -> int:
    stride = section.integer("stride", 1)
    for key in ("stride_x", "stride_y"):
        if section.integer(key, stride) != stride:
            raise section.fail(key, f"must equal stride={stride} (square strides only), but got {section.text(key)}")
    if stride < 1:
        raise section.fail("stride", f"must be >= 1, but got {stride}")
    return stride


def _activation(section: Section, default: str) -> str:
    activation = section.text("activation", default)
    if activation not in ACTIVATIONS:
        raise section.fail("activation", f"must be one of {', '.join(ACTIVATIONS)}, but got {activation}")
    return activation


def _conv(section: Section, channels: int) -> Conv:
    size, stride, filters = section.integer("size", 1), _stride(section), section.integer("filters", 1)
    groups = section.integer("groups", 1)
    if size < 1 or filters < 1:
        raise section.fail("size" if size < 1 else "filters", f"must be >= 1, but got {min(size, filters)}")
    if groups < 1 or channels % groups or filters % groups:
        raise section.fail("groups", f"must divide the {channels} input channels and filters={filters}, but got {groups}")
    pad = size // 2 if section.integer("pad", 0) else section.integer("padding", 0)
    # The map must shrink by the stride exactly (Darknet: (w + 2*pad - size) / stride + 1 = w / stride).
    if not size - stride <= 2 * pad <= size - 1:
        raise section.fail("pad", f"must keep the map at 1/stride of its input (size - stride <= 2*padding <= size - 1), "
                                  f"but size={size}, stride={stride} give padding {pad}")
    padding = None if stride == 1 and 2 * pad == size - 1 else (pad, max(0, size - stride - pad))
    return Conv(filters, size, stride, padding, groups, bool(section.integer("batch_normalize", 0)),
                _activation(section, "logistic"))


def _maxpool(section: Section) -> MaxPool:
    size, stride = section.integer("size", section.integer("stride", 1)), _stride(section)
    padding = section.integer("padding", size - 1)
    # TensorFlow's "same" pads max(size - stride, 0), the first half before: the same reads only then.
    if padding != size - 1 or (size - 1) // 2 != max(size - stride, 0) // 2 or size < 1:
        raise section.fail("size", f"with stride={stride} and padding={padding} pads otherwise than TensorFlow "
                                   f"can (it needs padding=size-1 and (size-1)//2 == (size-stride)//2), but got {size}")
    return MaxPool(size, stride)


def _sources(section: Section, layers: list[Layer], key: str) -> tuple[Layer, ...]:
    found = []
    for value in section.integers(key):
        source = section.index + value if value < 0 else value
        if not 0 <= source < section.index:
            raise section.fail(key, f"must name earlier layers (0..{section.index - 1}, or -1..-{section.index}), "
                                    f"but got {value}")
        if isinstance(layers[source].op, Yolo):
            raise section.fail(key, f"must not name a [yolo] layer (the builder keeps only its input), but got {value}")
        found.append(layers[source])
    if not found:
        raise section.fail(key, "must name at least one layer, but got none")
    if len({layer.stride for layer in found}) > 1:
        strides = ", ".join(f"layer {layer.index}: stride {layer.stride}" for layer in found)
        raise section.fail(key, f"must join maps of one size, but got {section.text(key)} ({strides})")
    return tuple(found)


def _route(section: Section, layers: list[Layer]) -> Layer:
    sources = _sources(section, layers, "layers")
    groups, group_id = section.integer("groups", 1), section.integer("group_id", 0)
    if groups < 1 or any(source.channels % groups for source in sources):
        raise section.fail("groups", f"must divide every routed layer's channels, but got {groups}")
    if not 0 <= group_id < groups:
        raise section.fail("group_id", f"must be in 0..{groups - 1}, but got {group_id}")
    if groups > 1 and len(sources) > 1:
        # Darknet takes the group of each layer; OpenCV's importer misreads that, so nothing could check it.
        raise section.fail("groups", f"must be 1 for a route of several layers (a group of one layer only), "
                                     f"but got groups={groups} with layers={section.text('layers')}")
    channels = sum(source.channels // groups for source in sources)
    return Layer(section.index, Route(groups, group_id), tuple(s.index for s in sources), channels, sources[0].stride)


def _shortcut(section: Section, layers: list[Layer]) -> Layer:
    sources, previous = _sources(section, layers, "from"), layers[-1]
    source = sources[0]
    if len(sources) != 1 or source.channels != previous.channels or source.stride != previous.stride:
        raise section.fail("from", f"must name one layer of the previous layer's shape ({previous.channels} channels, "
                                   f"stride {previous.stride}), but got {section.text('from')}")
    return Layer(section.index, Shortcut(_activation(section, "linear")), (previous.index, source.index),
                 previous.channels, previous.stride)


def _upsample(section: Section, previous: Layer) -> Layer:
    stride = section.integer("stride", 2)
    if stride < 1 or previous.stride % stride:
        raise section.fail("stride", f"must divide the input's stride {previous.stride} (no upsampling past the "
                                     f"input resolution), but got {stride}")
    return Layer(section.index, Upsample(stride), (previous.index,), previous.channels, previous.stride // stride)


def _yolo(section: Section, previous: Layer) -> Layer:
    num = section.integer("num", 1)
    anchors = section.integers("anchors", "")
    if len(anchors) != 2 * num:
        raise section.fail("anchors", f"must be num={num} (width, height) pairs, but got {len(anchors)} numbers")
    mask = section.integers("mask", ",".join(str(a) for a in range(num)))
    if not mask or not all(0 <= a < num for a in mask) or len(set(mask)) != len(mask):
        raise section.fail("mask", f"must be distinct anchor indices in 0..{num - 1}, but got {section.text('mask', '')}")
    classes = section.integer("classes", 20)  # Darknet's default
    if classes < 1:
        raise section.fail("classes", f"must be >= 1, but got {classes}")
    new_coords = section.integer("new_coords", 0)
    if new_coords not in (0, 1):
        raise section.fail("new_coords", f"must be 0 or 1, but got {new_coords}")
    op = Yolo(mask, tuple(zip(anchors[::2], anchors[1::2])), classes, section.number("scale_x_y", 1.0),
              bool(new_coords), section.number("iou_thresh", 1.0), section.number("ignore_thresh", 0.5))
    return Layer(section.index, op, (previous.index,), previous.channels, previous.stride)


def _layer(section: Section, layers: list[Layer]) -> Layer:
    """``section`` resolved against the ``layers`` before it."""
    if section.kind not in _READ:
        raise section.fail(None, f"[{section.kind}] is not a section the builder builds "
                                 f"(it builds [{'], ['.join(_READ)}])")
    _check_keys(section)
    previous = layers[-1] if layers else Layer(IMAGE, None, (), 3, 1)
    if section.kind == "route":
        return _route(section, layers)
    if isinstance(previous.op, Yolo):
        raise section.fail(None, "must not follow a [yolo] layer (route from the layer you mean instead)")
    if section.kind == "shortcut":
        return _shortcut(section, layers)
    if section.kind == "upsample":
        return _upsample(section, previous)
    if section.kind == "yolo":
        return _yolo(section, previous)
    if section.kind == "maxpool":
        op = _maxpool(section)
        return Layer(section.index, op, (previous.index,), previous.channels, previous.stride * op.stride)
    op = _conv(section, previous.channels)
    return Layer(section.index, op, (previous.index,), op.filters, previous.stride * op.stride)


@dataclass(frozen=True)
class Network:
    """A checked cfg: its ``layers`` in Darknet order, and what the rest of the search reads from them."""

    cfg: Cfg
    layers: tuple[Layer, ...]

    def of(self, kind: type) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer.op, kind))

    def input_channels(self, layer: Layer) -> int:
        return 3 if layer.inputs[0] == IMAGE else self.layers[layer.inputs[0]].channels

    @property
    def multiple(self) -> int:
        """The largest stride: the input size must be a multiple of it for every map to tile exactly."""
        return max(layer.stride for layer in self.layers)

    @property
    def num_classes(self) -> int:
        return self.of(Yolo)[0].op.classes

    def heads(self) -> YoloHeads:
        """The ``[yolo]`` layers in cfg order, which is the model's output order."""
        yolos = self.of(Yolo)
        first = yolos[0].op
        return YoloHeads(anchors=first.anchors, masks=tuple(y.op.mask for y in yolos),
                         strides=tuple(y.stride for y in yolos), scale_x_y=first.scale_x_y,
                         num_classes=first.classes, iou_thresh=first.iou_thresh,
                         ignore_thresh=first.ignore_thresh, new_coords=first.new_coords)

    @property
    def head_layers(self) -> tuple[str, ...]:
        """The convs feeding each ``[yolo]`` in cfg (output) order: the detection outputs."""
        return tuple(f"conv_{yolo.inputs[0]}" for yolo in self.of(Yolo))

    @property
    def dense_layers(self) -> tuple[str, ...]:
        """The head convs: every output channel is a box value or class score, so none is pruned."""
        return self.head_layers

    @property
    def split_layers(self) -> tuple[str, ...]:
        """``[route]`` of one layer with ``groups=2 group_id=1``: the second half of its channels."""
        return tuple(f"route_{r.index}" for r in self.of(Route)
                     if len(r.inputs) == 1 and (r.op.groups, r.op.group_id) == (2, 1))

    @property
    def float_count(self) -> int:
        """float32 values of the ``.weights`` file after its header: per conv, BN (4) or bias (1), then the kernel."""
        return sum(c.op.filters * (self.input_channels(c) // c.op.groups * c.op.size**2 + (4 if c.op.batch_normalize else 1))
                   for c in self.of(Conv))

    def check_resolution(self, resolution: int | None) -> None:
        if resolution is not None and (resolution <= 0 or resolution % self.multiple):
            raise ValueError(f"resolution must be a positive multiple of {self.multiple} for {self.cfg.source}, "
                             f"but got {resolution}.")


def _check_net(net: Section) -> None:
    channels = net.integer("channels", 3)
    if channels != 3:
        raise net.fail("channels", f"must be 3 (the search feeds RGB images), but got {channels}")


def _check_heads(cfg: Cfg, layers: list[Layer]) -> None:
    """Every [yolo] reads a conv of exactly its outputs' channels, and all of them agree on the rest."""
    yolos = [layer for layer in layers if isinstance(layer.op, Yolo)]
    if not yolos:
        raise WeightsError(f"a cfg must have at least one [yolo] layer, but {cfg.source} has none")
    for yolo in yolos:
        source, section = layers[yolo.inputs[0]], cfg.layers[yolo.inputs[0]]
        filters = len(yolo.op.mask) * (yolo.op.classes + 5)
        if not isinstance(source.op, Conv):
            raise cfg.layers[yolo.index].fail(None, "must follow a [convolutional] (its outputs are the head)")
        if source.op.filters != filters:
            raise section.fail("filters", f"must be len(mask) * (classes + 5) = {filters} for the [yolo] after it "
                                          f"(layer {yolo.index}), but got {source.op.filters}")
    first = yolos[0]
    for yolo in yolos[1:]:
        for key in ("anchors", "classes", "scale_x_y", "new_coords", "iou_thresh", "ignore_thresh"):
            mine, theirs = getattr(yolo.op, key), getattr(first.op, key)
            if mine != theirs:
                raise cfg.layers[yolo.index].fail(key, f"must be the same in every [yolo] (layer {first.index} has "
                                                       f"{theirs}), but got {mine}")
        if len(yolo.op.mask) != len(first.op.mask):
            raise cfg.layers[yolo.index].fail("mask", f"must give every head as many anchors as layer {first.index}'s "
                                                      f"{len(first.op.mask)}, but got {len(yolo.op.mask)}")


def _check_all_used(cfg: Cfg, layers: list[Layer]) -> None:
    """Refuse a layer no head depends on: Keras would drop it, and with it its weights' place in the file."""
    used, todo = set(), [layer.index for layer in layers if isinstance(layer.op, Yolo)]
    while todo:
        index = todo.pop()
        if index != IMAGE and index not in used:
            used.add(index)
            todo.extend(layers[index].inputs)
    for layer in layers:
        if layer.index not in used:
            raise cfg.layers[layer.index].fail(None, "feeds no [yolo] layer; the builder builds what the heads compute")


def read_network(cfg: Cfg) -> Network:
    """``cfg`` checked and resolved; ``WeightsError`` (one line) for anything the builder cannot build."""
    _check_net(cfg.net)
    layers: list[Layer] = []
    for section in cfg.layers:
        layers.append(_layer(section, layers))
    _check_heads(cfg, layers)
    _check_all_used(cfg, layers)
    return Network(cfg, tuple(layers))


def with_classes(cfg: Cfg, num_classes: int) -> Cfg:
    """``cfg`` for ``num_classes``: ``classes`` of every [yolo] and ``filters`` of the conv before it rewritten."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, but got {num_classes}.")
    for yolo in read_network(cfg).of(Yolo):
        cfg = cfg.with_layer(yolo.index, classes=num_classes)
        cfg = cfg.with_layer(yolo.inputs[0], filters=len(yolo.op.mask) * (num_classes + 5))
    return cfg
