"""The builder: Keras layers named after Darknet's, shapes, resolution checks, and exact weight round trips."""

import numpy as np
import pytest

from search.compat import keras
from search.models.darknet.builder import build_model
from search.models.darknet.cfg import parse_cfg, parse_cfg_text
from search.models.darknet.network import read_network, with_classes
from search.models.darknet.weights import darknet_weights_bytes, load_darknet_weights, model_float_count
from tests.models.darknet.common import ALL_OPTIONS_CFG, family_cfg, family_params, randomized

ALL_OPTIONS = read_network(parse_cfg_text(ALL_OPTIONS_CFG, source="all options"))


def test_layers_are_named_after_their_darknet_index_and_kind():
    model = build_model(ALL_OPTIONS, resolution=64, name="all_options")
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    assert kinds["conv_2"] == "DepthwiseConv2D" and model.get_layer("conv_3").groups == 2
    assert (kinds["mish_1"], kinds["swish_2"], kinds["relu_3"], kinds["logistic_18"]) == ("Activation", "Activation", "ReLU", "Activation")
    assert (kinds["shortcut_4"], kinds["route_8"], kinds["route_16"]) == ("Add", "Concatenate", "Concatenate")
    assert (kinds["route_6"], kinds["route_17"], kinds["upsample_15"], kinds["maxpool_5"]) == ("Lambda", "Lambda", "UpSampling2D", "MaxPooling2D")
    assert "route_14" not in kinds  # a route of one whole layer computes nothing
    assert model.get_layer("pad_11").padding == ((2, 1), (2, 1))  # 5x5 stride 2: Darknet's 2 on top, what it reads below
    assert "pad_0" not in kinds and model.get_layer("conv_0").padding == "same"
    assert model.get_layer("conv_7").use_bias and "bn_7" not in kinds and not model.get_layer("conv_0").use_bias
    assert model.count_params() == ALL_OPTIONS.float_count == model_float_count(model)


@pytest.mark.parametrize("resolution", [32, 64, None])
def test_outputs_are_the_heads_in_cfg_order(resolution):
    model = build_model(ALL_OPTIONS, resolution=resolution, name="all_options")
    size = resolution or 96
    outputs = model(np.zeros((1, size, size, 3), np.float32), training=False)
    assert [tuple(o.shape) for o in outputs] == [(1, size // 16, size // 16, 21), (1, size // 8, size // 8, 21)]


@pytest.mark.parametrize("resolution", [40, 0, -16])
def test_a_resolution_not_a_multiple_of_the_largest_stride_is_refused(resolution):
    with pytest.raises(ValueError, match=r"resolution must be a positive multiple of 16 for all options, but got"):
        build_model(ALL_OPTIONS, resolution=resolution, name="x")


def _round_trip(network, tmp_path):
    model = randomized(build_model(network, resolution=64, name="a"), seed=1)
    path = tmp_path / "a.weights"
    path.write_bytes(darknet_weights_bytes(model))
    assert path.stat().st_size == 20 + 4 * network.float_count
    fresh = randomized(build_model(network, resolution=64, name="b"), seed=2)
    load_darknet_weights(fresh, path, network=network, label="a.cfg")
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    image = np.random.default_rng(3).random((1, 64, 64, 3), np.float32)
    for a, b in zip(model(image, training=False), fresh(image, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert path.read_bytes() == darknet_weights_bytes(fresh)


def test_weights_round_trip_exactly_through_a_darknet_file(tmp_path):
    _round_trip(ALL_OPTIONS, tmp_path)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("name", family_params())
def test_every_family_cfg_round_trips_and_has_its_weight_count(name, tmp_path):
    network = read_network(with_classes(parse_cfg(family_cfg(name)), 3))
    _round_trip(network, tmp_path)


def test_depthwise_kernels_keep_darknets_channel_order(tmp_path):
    """Darknet's output channel c of a depthwise conv reads input channel c: a permuted layout would not see it."""
    cfg = parse_cfg_text("[net]\n[convolutional]\nfilters=3\ngroups=3\nsize=1\nactivation=linear\n"
                         "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nmask=0\nanchors=1,1\nnum=1\nclasses=1\n",
                         source="dw")
    network = read_network(cfg)
    model = build_model(network, resolution=None, name="dw")
    floats = np.concatenate([[10.0, 20.0, 30.0], [1.0, 2.0, 3.0], np.zeros(6), np.eye(6, 3).reshape(-1)])  # bias, kernel
    path = tmp_path / "dw.weights"
    path.write_bytes(np.asarray([0, 2, 5, 0, 0], "<i4").tobytes() + floats.astype("<f4").tobytes())
    load_darknet_weights(model, path, network=network, label="dw")
    outputs = model(np.ones((1, 1, 1, 3), np.float32))
    head = (outputs[0] if isinstance(outputs, list) else outputs).numpy()
    np.testing.assert_allclose(head[0, 0, 0, :3], [11.0, 22.0, 33.0])
    assert isinstance(model.get_layer("conv_0"), keras.layers.DepthwiseConv2D)
