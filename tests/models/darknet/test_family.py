"""A family made from a cfg file (``get_family(name, cfg=...)``): every field of the contract follows the cfg."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.errors import WeightsError
from search.models import get_family
from search.models.darknet.weights import darknet_weights_bytes
from tests.models.darknet.common import ALL_OPTIONS_CFG, randomized

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def all_options(tmp_path_factory):
    """(the cfg file, the family made from it)."""
    path = tmp_path_factory.mktemp("cfg") / "all-options.cfg"
    path.write_text(ALL_OPTIONS_CFG)
    return path, get_family("yolov4_tiny", cfg=path)


def test_the_family_builds_what_the_cfg_says_at_the_datas_class_count(all_options):
    path, family = all_options
    assert family.name == "yolov4_tiny" and family.display_name == "Darknet all-options.cfg"
    model = family.build(num_classes=4, resolution=64)
    heads = family.heads(4)
    assert model.name == "all_options" and heads.strides == (16, 8) and heads.channels == 27
    assert [tuple(o.shape) for o in model.outputs] == [(None, 4, 4, 27), (None, 8, 8, 27)]
    assert family.dense_layers(model) == ("conv_12", "conv_19") and family.channel_split_layers(model) == ("route_17",)
    assert family.card(4)["strides"] == (16, 8) and family.card(4)["anchors_pixels"][0] == (10, 14)


def test_architecture_round_trips_through_json_and_rebuilds_the_same_network(all_options):
    _, family = all_options
    model = family.build(num_classes=4, resolution=64)
    architecture = json.loads(json.dumps(family.architecture(model)))
    assert architecture["num_classes"] == 4 and "classes=4" in architecture["cfg"] and "width=64" in architecture["cfg"]
    rebuilt = family.from_architecture(architecture, resolution=32)
    assert rebuilt.name == model.name and [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    with pytest.raises(ValueError, match="architecture num_classes must be its cfg's 4, but got 5"):
        family.from_architecture({**architecture, "num_classes": 5}, resolution=32)


def test_the_model_writes_itself_back_as_cfg_and_weights_that_load_exactly(all_options, tmp_path):
    _, family = all_options
    model = randomized(family.build(num_classes=4, resolution=64), seed=3)
    cfg_text, weights = family.darknet_files(model)
    (tmp_path / "back.cfg").write_text(cfg_text)
    (tmp_path / "back.weights").write_bytes(weights)
    assert family.check_files(tmp_path / "back.cfg", tmp_path / "back.weights") == 4
    loaded, num_classes = family.load_pretrained(tmp_path / "back.cfg", tmp_path / "back.weights", resolution=64)
    assert num_classes == 4 and loaded.name == "back"
    image = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    for a, b in zip(model(image, training=False), loaded(image, training=False)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert family.darknet_files(loaded) == (cfg_text, weights) and darknet_weights_bytes(loaded) == weights


def test_weights_of_another_class_count_say_which(all_options, tmp_path):
    path, family = all_options
    (tmp_path / "three.weights").write_bytes(darknet_weights_bytes(family.build(num_classes=3, resolution=None)))
    with pytest.raises(WeightsError, match=r"wrong size .*: all-options.cfg at 2 classes needs .*; that size fits 3 classes"):
        family.check_files(path, tmp_path / "three.weights")


def test_a_cfg_the_builder_cannot_build_fails_when_the_family_is_made(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text(ALL_OPTIONS_CFG.replace("activation=mish", "activation=gelu"))
    with pytest.raises(WeightsError, match=r"^activation: must be one of .* but got gelu \(.*bad.cfg, layer 1 \[convolutional\], line \d+\)$"):
        get_family("yolov4_tiny", cfg=bad)
    with pytest.raises(WeightsError, match="Darknet cfg file not found"):
        get_family("yolov4_tiny", cfg=tmp_path / "nope.cfg")


def test_checking_a_cfg_and_its_weights_imports_no_tensorflow(all_options, tmp_path):
    path, family = all_options
    weights = tmp_path / "w.weights"
    weights.write_bytes(darknet_weights_bytes(family.build(num_classes=2, resolution=None)))
    code = ("import sys; from search.models import get_family; "
            f"print(get_family('yolov4_tiny', cfg={str(path)!r}).check_files({str(path)!r}, {str(weights)!r})); "
            "print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split("\n")[:2] == ["2", "[]"]
