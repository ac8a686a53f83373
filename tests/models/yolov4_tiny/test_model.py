"""The YOLOv4-tiny builder: parameter count, head shapes, resolution check, Darknet layer names."""

import numpy as np
import pytest

from search.models.yolov4_tiny.builder import build_yolov4_tiny, head_channels
from search.models.yolov4_tiny.darknet import YOLOV4_TINY_LAYERS, conv_layer_indices

OFFICIAL_WEIGHTS_FLOATS = 6_062_814  # float32 count of the official yolov4-tiny.weights


@pytest.mark.slow  # full size (416 px)
def test_official_size_has_exactly_the_official_weights_count():
    model = build_yolov4_tiny(num_classes=80, resolution=416)
    assert model.count_params() == OFFICIAL_WEIGHTS_FLOATS
    assert [tuple(o.shape) for o in model.outputs] == [(None, 13, 13, 255), (None, 26, 26, 255)]


@pytest.mark.parametrize("resolution", [64, 96])
def test_heads_are_coarse_then_fine_with_three_anchors_per_cell(resolution):
    model = build_yolov4_tiny(num_classes=3, resolution=resolution)
    coarse, fine = model(np.random.default_rng(0).random((2, resolution, resolution, 3), np.float32))
    assert head_channels(3) == 24
    assert coarse.shape == (2, resolution // 32, resolution // 32, 24)
    assert fine.shape == (2, resolution // 16, resolution // 16, 24)


def test_any_size_model_runs_at_several_resolutions():
    model = build_yolov4_tiny(num_classes=2, resolution=None)
    for resolution in (64, 96):
        coarse, fine = model(np.zeros((1, resolution, resolution, 3), np.float32))
        assert coarse.shape[1] == resolution // 32 and fine.shape[1] == resolution // 16


@pytest.mark.parametrize("resolution", [100, 48, 0, -32])
def test_resolution_not_a_positive_multiple_of_32_is_refused(resolution):
    with pytest.raises(ValueError, match="multiple of 32"):
        build_yolov4_tiny(num_classes=3, resolution=resolution)


def test_num_classes_below_one_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        build_yolov4_tiny(num_classes=0, resolution=64)


def test_convolutions_are_named_by_their_darknet_layer_index():
    model = build_yolov4_tiny(num_classes=3, resolution=64)
    cfg_convs = [i for i, (kind, _) in enumerate(YOLOV4_TINY_LAYERS) if kind == "convolutional"]
    assert conv_layer_indices(model) == cfg_convs
    assert cfg_convs[0] == 0 and cfg_convs[-1] == 36 and len(cfg_convs) == 21
    names = {layer.name for layer in model.layers}
    for i in cfg_convs:
        # Every conv has a BN except the two heads (29 and 36), which have a bias instead.
        assert (f"bn_{i}" in names) == (i not in (29, 36))
        assert model.get_layer(f"conv_{i}").use_bias == (i in (29, 36))


def test_family_card_is_the_export_cards_outputs_section():
    from search.models import get_family

    card = get_family("yolov4_tiny").card(80)
    assert card == {
        "heads": "two raw YOLO heads, stride 32 then 16 (identify by grid size)",
        "channels": "3 anchors x (tx, ty, tw, th, objectness, class logits)",
        "anchors_pixels": ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)),
        "masks": ((3, 4, 5), (1, 2, 3)),
        "strides": (32, 16),
        "scale_x_y": 1.05,
    }


def test_architecture_describes_a_thinner_network_and_refuses_other_layers():
    from search.compat import keras
    from search.models import get_family
    from search.models.darknet.builder import build_model
    from search.models.darknet.network import read_network
    from search.models.yolov4_tiny.darknet import stock_cfg

    family = get_family("yolov4_tiny")
    model = build_yolov4_tiny(num_classes=3, resolution=64)
    assert family.architecture(model)["num_classes"] == 3
    # Layer 26 (512 filters in the cfg) pruned to 384: the architecture is the cfg that says so.
    thin = build_model(read_network(stock_cfg(num_classes=3).with_layer(26, filters=384)), resolution=64, name="thin")
    architecture = family.architecture(thin)
    assert "filters=384" in architecture["cfg"] and architecture["name"] == "thin"
    rebuilt = family.from_architecture(architecture, resolution=64)
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in thin.weights]
    assert rebuilt.count_params() < model.count_params()
    other = keras.Model(model.input, keras.layers.Conv2D(24, 1, name="conv_29")(model.get_layer("leaky_0").output))
    with pytest.raises(ValueError, match=r"must have a conv_<i> for each \[convolutional\]"):
        family.architecture(other)
