"""The model-family registry: one contract, run against every family in ``FAMILIES``."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.errors import SpaceError
from search.models import FAMILIES, ModelFamily, YoloHeads, get_family

RESOLUTION = 64
NUM_CLASSES = 3


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request):
    """(family, its model at 64 px and 3 classes) for each family."""
    from search.compat import keras

    family = FAMILIES[request.param]
    keras.utils.set_random_seed(0)
    return family, family.build(num_classes=NUM_CLASSES, resolution=RESOLUTION)


def test_every_row_is_a_family_under_its_own_name():
    for name, family in FAMILIES.items():
        assert isinstance(family, ModelFamily) and family.name == name
        assert family.display_name and family.description
        assert callable(family.darknet_files) and callable(family.with_cfg)


def test_outputs_are_the_heads_the_family_declares(built):
    family, model = built
    heads = family.heads(NUM_CLASSES)
    assert isinstance(heads, YoloHeads) and heads.num_classes == NUM_CLASSES
    outputs = model(np.zeros((1, RESOLUTION, RESOLUTION, 3), np.float32), training=False)
    assert len(outputs) == len(heads.strides)
    for output, stride in zip(outputs, heads.strides):  # in the model's output order
        assert tuple(output.shape) == (1, RESOLUTION // stride, RESOLUTION // stride, heads.channels)


def test_architecture_is_json_and_rebuilds_the_same_network(built):
    family, model = built
    architecture = json.loads(json.dumps(family.architecture(model)))
    rebuilt = family.from_architecture(architecture, resolution=RESOLUTION)
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]


def test_dense_layers_and_channel_splits_name_layers_of_the_model(built):
    from search.compat import keras

    family, model = built
    dense = family.dense_layers(model)
    assert dense and all(isinstance(model.get_layer(name), keras.layers.Conv2D) for name in dense)
    for name in family.channel_split_layers(model):
        layer = model.get_layer(name)
        assert tuple(layer.output_shape) == (*layer.input_shape[:-1], layer.input_shape[-1] // 2)


def test_head_layers_are_the_convs_making_the_outputs(built):
    """What the int8 recipes keep at higher precision: one conv per head, shaped as its output."""
    from search.compat import keras

    family, model = built
    heads = family.head_layers(model)
    assert len(heads) == len(model.outputs)
    for name, output in zip(heads, model.outputs):  # in the model's output order
        layer = model.get_layer(name)
        assert isinstance(layer, keras.layers.Conv2D)
        assert tuple(layer.output.shape[1:]) == tuple(output.shape[1:])


def test_card_describes_the_heads(built):
    family, _ = built
    card = family.card(NUM_CLASSES)
    heads = family.heads(NUM_CLASSES)
    assert json.loads(json.dumps(card))["strides"] == list(heads.strides)
    assert {"heads", "channels", "anchors_pixels", "masks", "strides", "scale_x_y"} <= set(card)


def test_an_unknown_family_is_one_line_with_a_suggestion():
    with pytest.raises(SpaceError, match=r"model.name must be one of .* but got 'yolov4_tiyn'.*did you mean 'yolov4_tiny'"):
        get_family("yolov4_tiyn")


def test_importing_the_registry_does_not_import_tensorflow():
    code = "import sys, search.models; print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
