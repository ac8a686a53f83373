"""The MACs cost proxy: hand-counted layers, parity with Darknet's own count, quadratic scaling."""

from pathlib import Path

import pytest

from search.objectives.macs import count_macs
from search.compat import keras
from search.models.yolov4_tiny.darknet import parse_cfg, yolov4_tiny_cfg_text
from search.models.yolov4_tiny.builder import build_yolov4_tiny
from search.prune import PruningSpec, prune

OFFICIAL_CFG = Path(__file__).resolve().parents[3] / "shared" / "real" / "darknet" / "yolov4-tiny.cfg"
YOLOV4_TINY_416_MACS = 3_453_938_176  # = Darknet's conv count / 2, see test_parity_with_darknet
DARKNET_BFLOPS_416 = 6.910  # what Darknet prints for yolov4-tiny.cfg at 416 ("Total BFLOPS 6.910")


def darknet_bflops(sections: list[dict]) -> tuple[float, float]:
    """(conv, max-pool) BFLOPs of a cfg, by Darknet's own formulas (convolutional_layer.c, maxpool_layer.c).

    An independent walk over the cfg's layers and shapes: nothing here reads the Keras model.
    """
    net, *layers = sections
    h, w, c = int(net["height"]), int(net["width"]), int(net["channels"])
    shapes, conv, pool = [], 0.0, 0.0
    for i, s in enumerate(layers):
        kind = s["type"]
        if kind == "convolutional":
            size, stride, n = int(s["size"]), int(s.get("stride", 1)), int(s["filters"])
            pad = size // 2 if s.get("pad", "0") == "1" else 0
            h = w = (h + 2 * pad - size) // stride + 1
            conv += 2.0 * size * size * c * n * h * w / 1e9
            c = n
        elif kind == "maxpool":
            size, stride = int(s["size"]), int(s["stride"])
            h = w = (h + size - 1 - size) // stride + 1  # Darknet's default padding: size - 1
            pool += size * size * c * h * w / 1e9
        elif kind == "route":
            sources = [int(v) for v in s["layers"].split(",")]
            sources = [i + v if v < 0 else v for v in sources]
            h, w = shapes[sources[0]][:2]
            c = sum(shapes[j][2] for j in sources) // int(s.get("groups", 1))
        elif kind == "upsample":
            h, w = h * int(s["stride"]), w * int(s["stride"])
        shapes.append((h, w, c))  # [yolo] keeps its input's shape
    return conv, pool


def test_hand_counted_layers():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(6, 3, padding="same")(inputs)  # 8*8 * 3*3*4 * 6 = 13,824
    x = keras.layers.BatchNormalization()(x)  # folded into the conv when converted: 0
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(x)  # 6*6 * 3*3 * 12 = 3,888
    x = keras.layers.Conv2D(4, 1, groups=2)(x)  # 6*6 * 1*1*(12/2) * 4 = 864
    x = keras.layers.MaxPooling2D()(x)  # 0
    x = keras.layers.Dense(3)(x)  # per position: 3*3 * 4 * 3 = 108
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)  # 3 * 5 = 15
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == 13_824 + 3_888 + 864 + 108 + 15
    # a model used as a layer of another counts what it computes
    outer_inputs = keras.Input((8, 8, 4))
    outer = keras.Model(outer_inputs, keras.layers.Dense(2)(model(outer_inputs)))  # + 5 * 2
    assert count_macs(outer) == count_macs(model) + 10


@pytest.mark.slow  # full size (416 px)
@pytest.mark.parametrize(
    "cfg",
    [
        "generated",
        pytest.param(
            "official",
            marks=[
                pytest.mark.real,
                pytest.mark.skipif(not OFFICIAL_CFG.is_file(), reason=f"official cfg not found: {OFFICIAL_CFG} (../shared/real is absent)"),
            ],
        ),
    ],
)
def test_parity_with_darknet(cfg, tmp_path):
    if cfg == "generated":
        path = tmp_path / "yolov4-tiny.cfg"
        path.write_text(yolov4_tiny_cfg_text(num_classes=80, resolution=416))
    else:
        path = OFFICIAL_CFG
    conv_bflops, pool_bflops = darknet_bflops(parse_cfg(path))
    macs = count_macs(build_yolov4_tiny(num_classes=80, resolution=416))

    assert macs == YOLOV4_TINY_416_MACS
    assert 2 * macs / 1e9 == pytest.approx(conv_bflops, rel=1e-12)  # Darknet: FLOPs = 2 x MACs
    # Darknet's printed total also counts the max-pools' comparisons, which are not MACs.
    assert round(conv_bflops + pool_bflops, 3) == DARKNET_BFLOPS_416


@pytest.mark.slow  # up to 608 px
def test_macs_scale_with_the_square_of_the_resolution():
    # Every feature map is the input divided by a power of two, so the count is exactly quadratic.
    for resolution in (64, 160, 608):
        macs = count_macs(build_yolov4_tiny(num_classes=80, resolution=resolution))
        assert macs * 416**2 == YOLOV4_TINY_416_MACS * resolution**2


@pytest.mark.slow  # full size (416 px)
def test_fewer_classes_cost_only_in_the_heads():
    two = count_macs(build_yolov4_tiny(num_classes=2, resolution=416))
    # the two 1x1 head convs: 13*13*512 and 26*26*256 inputs, 3 * (5 + C) outputs
    per_output_channel = 13 * 13 * 512 + 26 * 26 * 256
    assert YOLOV4_TINY_416_MACS - two == per_output_channel * 3 * (80 - 2)


def test_pruning_wrappers_count_as_the_layers_they_wrap():
    model = build_yolov4_tiny(num_classes=2, resolution=64)
    wrapped = prune(model, PruningSpec(schedule="constant", target_sparsity=0.5), steps=10, dense_layers=("conv_29", "conv_36"))
    assert any(layer.name.startswith("prune_low_magnitude_") for layer in wrapped.layers)
    assert count_macs(wrapped) == count_macs(model) > 0


def test_unknown_resolution_raises():
    with pytest.raises(ValueError, match="fixed resolution"):
        count_macs(build_yolov4_tiny(num_classes=80, resolution=None))
