"""What a cfg says, read from its text alone: heads, dense and split layers, weight counts, class
rewriting, and one clear line for every section, key or value the builder does not build."""

import pytest

from search.errors import WeightsError
from search.models.darknet.cfg import parse_cfg, parse_cfg_text
from search.models.darknet.network import read_network, with_classes
from search.models.yolov4_tiny.constants import ANCHORS, IGNORE_THRESH, IOU_THRESH, MASKS, SCALE_X_Y, STRIDES
from search.models.yolov4_tiny.darknet import yolov4_tiny_cfg_text
from tests.models.darknet.common import ALL_OPTIONS_CFG, family_cfg, family_params

OFFICIAL_FLOATS = 6_062_814  # float32 count of the official yolov4-tiny.weights


def _stock(num_classes=2, resolution=64):
    return read_network(parse_cfg_text(yolov4_tiny_cfg_text(num_classes=num_classes, resolution=resolution), source="s"))


def test_the_stock_cfg_gives_the_stock_heads_and_layers():
    network = _stock(num_classes=80)
    heads = network.heads()
    assert (heads.anchors, heads.masks, heads.strides, heads.scale_x_y) == (ANCHORS, MASKS, STRIDES, SCALE_X_Y)
    assert (heads.num_classes, heads.iou_thresh, heads.ignore_thresh, heads.new_coords) == (80, IOU_THRESH, IGNORE_THRESH, False)
    assert network.float_count == OFFICIAL_FLOATS and network.multiple == 32
    assert network.dense_layers == ("conv_29", "conv_36")
    assert network.split_layers == ("route_3", "route_11", "route_19")


def test_all_options_resolve_to_their_shapes():
    network = read_network(parse_cfg_text(ALL_OPTIONS_CFG, source="all"))
    shapes = {layer.index: (layer.channels, layer.stride) for layer in network.layers}
    assert shapes[4] == (32, 2) and shapes[6] == (16, 2) and shapes[8] == (48, 2)  # shortcut, half, concat
    assert shapes[11] == (64, 16) and shapes[15] == (64, 8) and shapes[17] == (56, 8)  # 5x5/2, upsample, half of 112
    heads = network.heads()
    assert heads.strides == (16, 8) and heads.scale_x_y == 1.1 and heads.iou_thresh == 1.0  # Darknet's default
    assert network.split_layers == ("route_17",)  # the second half only: route_6 takes the first
    assert network.multiple == 16 and network.dense_layers == ("conv_12", "conv_19")


EXPECTED_HEADS = {  # cfg -> (strides, masks, scale_x_y, new_coords, anchors)
    "yolov4-tiny": ((32, 16), ((3, 4, 5), (1, 2, 3)), 1.05, False, 6),
    "yolov4-tiny-3l": ((32, 16, 8), ((6, 7, 8), (3, 4, 5), (0, 1, 2)), 1.05, False, 9),
    "yolov4-tiny-custom": ((32, 16), ((3, 4, 5), (0, 1, 2)), 1.05, False, 6),
    "yolov3-tiny": ((32, 16), ((3, 4, 5), (0, 1, 2)), 1.0, False, 6),
    "yolov7-tiny": ((8, 16, 32), ((0, 1, 2), (3, 4, 5), (6, 7, 8)), 2.0, True, 9),
}


@pytest.mark.real
@pytest.mark.parametrize("name", family_params())
def test_each_family_cfg_gives_its_heads(name):
    network = read_network(parse_cfg(family_cfg(name)))
    heads = network.heads()
    assert (heads.strides, heads.masks, heads.scale_x_y, heads.new_coords, len(heads.anchors)) == EXPECTED_HEADS[name]
    assert heads.num_classes == 80 and len(network.dense_layers) == len(heads.strides)
    if name == "yolov4-tiny":
        assert network.float_count == OFFICIAL_FLOATS
    if name == "yolov3-tiny":
        assert network.float_count == 8_858_734 and not network.split_layers  # (35,434,956 - 20) / 4: Darknet's file


def test_with_classes_rewrites_the_yolo_classes_and_head_filters_only():
    cfg = parse_cfg_text(yolov4_tiny_cfg_text(num_classes=80), source="s")
    three = with_classes(cfg, 3)
    changed = [(a.index, dict(set(b.options.items()) - set(a.options.items())))
               for a, b in zip(cfg.layers, three.layers) if a.options != b.options]
    assert changed == [(29, {"filters": "24"}), (30, {"classes": "3"}), (36, {"filters": "24"}), (37, {"classes": "3"})]
    assert three.text() == yolov4_tiny_cfg_text(num_classes=3)
    assert read_network(three).float_count == _stock(num_classes=3).float_count
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        with_classes(cfg, 0)


def _edit(text, old, new, which):
    assert old in text, old
    if which == "last":
        head, _, tail = text.rpartition(old)
        return head + new + tail
    return text.replace(old, new, 1 if which == "first" else -1)


# (edits to the stock 2-class cfg: (old, new, "first" / "last" / "all"), the error it must give)
BAD_CFGS = {
    "head_filters": ([("filters=21", "filters=255", "first")],
                     r"^filters: must be len\(mask\) \* \(classes \+ 5\) = 21 for the \[yolo\] after it \(layer 30\), "
                     r"but got 255 \(.*bad.cfg, layer 29 \[convolutional\], line \d+\)$"),
    "classes_differ": ([("classes=2", "classes=3", "last"), ("filters=21", "filters=24", "last")],
                       r"^classes: must be the same in every \[yolo\] \(layer 30 has 2\), but got 3 \(.*layer 37 \[yolo\]"),
    "activation": ([("activation=leaky", "activation=elu", "first")],
                   r"^activation: must be one of linear, leaky, logistic, relu, mish, swish, but got elu .*layer 0 \[convolutional\]"),
    "route_sizes": ([("layers=-1,23", "layers=-1,8", "first")],
                    r"^layers: must join maps of one size, but got -1,8 \(layer 33: stride 16, layer 8: stride 4\) "
                    r"\(.*layer 34 \[route\]"),
    "route_forward": ([("layers=-1,23", "layers=-1,40", "first")], r"^layers: must name earlier layers \(0..33, or -1..-34\), but got 40"),
    "route_yolo": ([("layers=-4", "layers=-1", "first")], r"^layers: must not name a \[yolo\] layer .*layer 31 \[route\]"),
    "dilation": ([("filters=32\n", "filters=32\ndilation=2\n", "first")],
                 r"^dilation: must be 1 \(the builder has no other\), but got 2 .*layer 0 \[convolutional\]"),
    "unknown_key": ([("filters=32\n", "filters=32\nfoo=1\n", "first")],
                    r"^foo: is not a key the builder reads or can ignore in a \[convolutional\] section, but got foo=1 "),
    "section": ([("[maxpool]", "[avgpool]", "first")],
                r"^\[avgpool\] is not a section the builder builds \(it builds \[convolutional\], \[maxpool\], \[route\], "
                r"\[shortcut\], \[upsample\], \[yolo\]\) \(.*layer 9 \[avgpool\], line \d+\)$"),
    "maxpool_3x3_stride_2": ([("size=2\nstride=2", "size=3\nstride=2", "first")],
                             r"^size: with stride=2 and padding=2 pads otherwise than TensorFlow can .* but got 3 .*layer 9 \[maxpool\]"),
    "stride_x": ([("stride=2\n", "stride=2\nstride_x=1\n", "first")], r"^stride_x: must equal stride=2 \(square strides only\), but got 1 "),
    "not_a_number": ([("filters=32\n", "filters=3x2\n", "first")], r"^filters: must be an integer, but got '3x2' .*layer 0 "),
    "channels": ([("channels=3", "channels=1", "first")], r"^channels: must be 3 \(the search feeds RGB images\), but got 1 \(.*\[net\]"),
    "anchors": ([("344,319", "344", "first")], r"^anchors: must be num=6 \(width, height\) pairs, but got 11 numbers .*layer 30 \[yolo\]"),
    "mask": ([("mask=3,4,5", "mask=3,4,9", "first")], r"^mask: must be distinct anchor indices in 0..5, but got 3,4,9 "),
    "mask_count": ([("mask=1,2,3", "mask=1,2", "first"), ("filters=21", "filters=14", "last")],
                   r"^mask: must give every head as many anchors as layer 30's 3, but got 2 .*layer 37 \[yolo\]"),
    "group_of_several": ([("layers=-1\ngroups=2", "layers=-1,-2\ngroups=2", "first")],
                         r"^groups: must be 1 for a route of several layers .*layer 3 \[route\]"),
    "group_id": ([("group_id=1", "group_id=2", "first")], r"^group_id: must be in 0..1, but got 2 .*layer 3 \[route\]"),
    "unused": ([("", "[route]\nlayers=-2\n\n[convolutional]\nfilters=8\nsize=1\nactivation=leaky\n", "append")],
               r"^feeds no \[yolo\] layer; the builder builds what the heads compute \(.*layer 38 \[route\]"),
    "after_yolo": ([("", "[convolutional]\nfilters=8\nsize=1\nactivation=leaky\n", "append")],
                   r"^must not follow a \[yolo\] layer .*layer 38 \[convolutional\]"),
    "upsample_past_input": ([("[upsample]\nstride=2", "[upsample]\nstride=64", "first")],
                            r"^stride: must divide the input's stride 32 .* but got 64 .*layer 33 \[upsample\]"),
    "upsample_scale": ([("[upsample]\nstride=2", "[upsample]\nstride=2\nscale=2", "first")], r"^scale: must be 1 "),
    "pad": ([("size=3\nstride=2\npad=1", "size=3\nstride=2\npad=0", "first")],
            r"^pad: must keep the map at 1/stride of its input .* but size=3, stride=2 give padding 0 "),
}


@pytest.mark.parametrize("case", sorted(BAD_CFGS))
def test_each_bad_cfg_is_one_line_naming_file_layer_and_key(case, tmp_path):
    edits, message = BAD_CFGS[case]
    text = yolov4_tiny_cfg_text(num_classes=2, resolution=64)
    for old, new, which in edits:
        text = text + "\n" + new if which == "append" else _edit(text, old, new, which)
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(WeightsError, match=message) as caught:
        read_network(parse_cfg(cfg))
    assert "\n" not in str(caught.value) and str(cfg) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[net]\n[convolutional]\nfilters=2\nsize=1\n", r"a cfg must have at least one \[yolo\] layer, but t.cfg has none"),
        ("[net]\n[convolutional]\nfilters=4\n[convolutional]\nfilters=8\n[shortcut]\nfrom=-2\n",
         r"^from: must name one layer of the previous layer's shape \(8 channels, stride 1\), but got -2 "),
        ("[net]\n[convolutional]\nfilters=4\ngroups=3\n", r"^groups: must divide the 3 input channels and filters=4, but got 3 "),
        ("[net]\n[convolutional]\nfilters=18\nsize=1\n[yolo]\nmask=0\nanchors=1,2,3,4\nnum=2\nclasses=1\nnew_coords=2\n",
         r"^new_coords: must be 0 or 1, but got 2"),
    ],
    ids=["no_yolo", "shortcut_shape", "conv_groups", "new_coords"],
)
def test_small_bad_cfgs(text, message):
    with pytest.raises(WeightsError, match=message):
        read_network(parse_cfg_text(text, source="t.cfg"))
