"""TFMOT pruning of YOLOv4-tiny: real wrappers, real fine-tunes at 64 px, real TFLite conversion."""

import numpy as np
import pytest

from search.compat import keras, tf
from search.errors import SpaceError
from search.models import get_family
from search.prune import copy_weights, is_pruned_layer, measured_sparsity, prune, prune_and_fine_tune
from search.pruning import MIN_PRUNING_STEPS, SCHEDULES, PruningSpec, pruning_timing
from tests.helpers import training_set

RESOLUTION = 64
NUM_CLASSES = 2
STEPS = MIN_PRUNING_STEPS  # the shortest fine-tune allowed must still reach every target
LEARNING_RATE = 2e-4  # 60 steps at 5e-4 alone took a base model from mAP@0.5 0.69 to 0.66
FAMILY = get_family("yolov4_tiny")
DENSE = ("conv_29", "conv_36")  # the heads' 1x1 output convs, written out: the family must say the same
DENSE_FILTERS = 3 * (5 + NUM_CLASSES)  # theirs: 3 anchors x (box, objectness, classes), kept by filter pruning


def pruned_layers(model) -> list:
    return [layer for layer in model.layers if is_pruned_layer(layer, dense_layers=DENSE)]

SPECS = {
    "none": PruningSpec(),
    "constant": PruningSpec(schedule="constant", target_sparsity=0.5),
    "polynomial_decay": PruningSpec(schedule="polynomial_decay", target_sparsity=0.6, initial_sparsity=0.1),
    "2:4": PruningSpec(schedule="polynomial_decay", structure="2:4"),  # TFMOT ignores the schedule here
}
# Filter pruning fine-tunes on its own, in the slow tier (~15 s more): `make test-fast` prunes filters
# in a whole trial (tests/models/darknet/test_stages.py), to its target, through the stage cache.
FILTERS = PruningSpec(schedule="polynomial_decay", target_sparsity=0.5, structure="filters")


@pytest.fixture(scope="module")
def base_model():
    keras.utils.set_random_seed(0)
    return FAMILY.build(num_classes=NUM_CLASSES, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def fine_tuned(base_model):
    """Each spec fine-tuned once for STEPS steps: name -> (stripped model, measured sparsity)."""
    train = training_set(4, resolution=RESOLUTION, num_classes=NUM_CLASSES)
    images, boxes, classes = train["images"], train["boxes"], train["classes"]
    before = [w.copy() for w in base_model.get_weights()]
    results = {
        name: prune_and_fine_tune(
            base_model, spec, steps=STEPS, dense_layers=FAMILY.dense_layers(base_model), heads=FAMILY.heads(NUM_CLASSES),
            images=images, boxes=boxes, classes=classes, batch_size=2, learning_rate=LEARNING_RATE,
        )
        for name, spec in SPECS.items()
    }
    # the model passed in is never modified
    assert all(np.array_equal(a, b) for a, b in zip(before, base_model.get_weights()))
    return results


def test_every_schedule_is_exercised():
    assert {spec.schedule for spec in SPECS.values()} == set(SCHEDULES)


@pytest.mark.parametrize("name", ["constant", "polynomial_decay", "2:4"])
def test_schedule_reaches_its_target(fine_tuned, name):
    _, sparsity = fine_tuned[name]
    assert sparsity == pytest.approx(SPECS[name].sparsity, abs=0.02)


@pytest.mark.slow
def test_filters_fine_tune_returns_a_thinner_network_on_target(base_model):
    from search.objectives.macs import count_macs

    images = np.full((2, RESOLUTION, RESOLUTION, 3), 128, np.uint8)  # filters are ranked by their weights
    model, sparsity = prune_and_fine_tune(
        base_model, FILTERS, steps=STEPS, dense_layers=DENSE, heads=FAMILY.heads(NUM_CLASSES), images=images,
        boxes=[np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)] * 2, classes=[np.array([0], np.int32)] * 2, batch_size=2,
        learning_rate=LEARNING_RATE, family=FAMILY)
    assert sparsity == pytest.approx(FILTERS.sparsity, abs=0.02)
    assert model.get_layer("conv_2").filters == 32 and model.get_layer("conv_29").filters == DENSE_FILTERS
    assert count_macs(model) < 0.35 * count_macs(base_model)  # in and out channels both halve
    assert model.count_params() < 0.35 * base_model.count_params()
    assert FAMILY.from_architecture(FAMILY.architecture(model), resolution=RESOLUTION).count_params() == model.count_params()


def test_none_fine_tunes_without_pruning(fine_tuned, base_model):
    model, sparsity = fine_tuned["none"]
    assert sparsity < 0.01
    assert not np.array_equal(model.get_layer("conv_2").kernel.numpy(), base_model.get_layer("conv_2").kernel.numpy())


def test_two_of_every_four_input_channels_are_zero(fine_tuned):
    model, _ = fine_tuned["2:4"]
    checked = 0
    for layer in pruned_layers(model):
        kernel = layer.kernel.numpy()  # (h, w, in, out): blocks run along the input channels
        rows = np.transpose(kernel, (3, 0, 1, 2)).reshape(-1, kernel.shape[2])
        rows = np.pad(rows, ((0, 0), (0, -rows.shape[1] % 4)))
        nonzero_per_block = np.count_nonzero(rows.reshape(rows.shape[0], -1, 4), axis=2)
        assert nonzero_per_block.max() <= 2, layer.name
        checked += 1
    assert checked == 19  # all 21 convs but the two head outputs


def test_head_output_convs_are_not_pruned(fine_tuned, base_model):
    assert FAMILY.dense_layers(base_model) == DENSE
    model, _ = fine_tuned["constant"]
    for name in DENSE:
        assert np.count_nonzero(model.get_layer(name).kernel.numpy() == 0) == 0


def test_dense_layers_are_what_the_caller_says(base_model):
    # Nothing in prune is tied to one network: naming no dense layer prunes every conv.
    everything = prune(base_model, SPECS["constant"], steps=STEPS, dense_layers=())
    assert sum(layer.name.startswith("prune_low_magnitude_conv_") for layer in everything.layers) == 21
    assert measured_sparsity(base_model, dense_layers=()) < 0.01


def test_copy_weights_fills_a_wrapped_clone(base_model):
    # A wrapped clone of another (random) model computes what base_model does once its weights are copied in.
    other = prune(FAMILY.build(num_classes=NUM_CLASSES, resolution=RESOLUTION), SPECS["constant"], steps=STEPS,
                  dense_layers=DENSE)
    copy_weights(base_model, other)
    images = np.random.default_rng(2).uniform(0, 1, (1, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    for ours, theirs in zip(other(images, training=False), base_model(images, training=False)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_stripped_model_keeps_its_outputs_and_converts_to_tflite(fine_tuned, base_model):
    model, _ = fine_tuned["constant"]
    assert [layer.name for layer in model.layers] == [layer.name for layer in base_model.layers]
    assert [tuple(o.shape) for o in model.outputs] == [tuple(o.shape) for o in base_model.outputs]
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert len(flatbuffer) > 100_000


def test_wrapped_clone_computes_what_the_model_computes(base_model):
    pruned = prune(base_model, SPECS["constant"], steps=STEPS, dense_layers=DENSE)
    assert sum(layer.name.startswith("prune_low_magnitude_conv_") for layer in pruned.layers) == 19
    images = np.random.default_rng(1).uniform(0, 1, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    for ours, theirs in zip(pruned(images, training=False), base_model(images, training=False)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_too_few_steps_raises_space_error(base_model):
    with pytest.raises(SpaceError, match="at least 10 fine-tune steps"):
        prune(base_model, SPECS["constant"], steps=5, dense_layers=DENSE)


def test_timing_is_fitted_to_the_fine_tune():
    assert pruning_timing(steps=20) == pruning_timing(steps=20).__class__(begin_step=0, end_step=14, frequency=2)
    timing = pruning_timing(steps=800)
    assert (timing.frequency, timing.end_step) == (80, 560)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"schedule": "constnt", "target_sparsity": 0.5}, "did you mean 'constant'"),
        ({"schedule": "constant", "target_sparsity": 1.0}, r"must be in \[0, 1\)"),
        ({"schedule": "constant", "target_sparsity": 0.0}, "use schedule 'none'"),
        ({"schedule": "none", "target_sparsity": 0.3}, "prunes nothing"),
        ({"schedule": "constant", "target_sparsity": 0.7, "structure": "2:4"}, "must be 0.5"),
        ({"schedule": "none", "structure": "2:4"}, "prunes nothing"),
        ({"schedule": "polynomial_decay", "target_sparsity": 0.5, "initial_sparsity": 0.5}, "initial_sparsity"),
        ({"schedule": "constant", "target_sparsity": 0.5, "structure": "4:8"}, "structure must be one of"),
    ],
)
def test_invalid_specs_raise_space_error(fields, message):
    with pytest.raises(SpaceError, match=message):
        PruningSpec(**fields)


# --- Each schedule as TFMOT runs it, per layer, and what pruning leaves in the converted file.


def _layer_sparsities(model) -> dict[str, float]:
    return {
        layer.name: float(np.mean(layer.kernel.numpy() == 0.0)) for layer in pruned_layers(model)
    }


@pytest.mark.parametrize("name", ["constant", "polynomial_decay"])
def test_every_pruned_layer_reaches_the_target(fine_tuned, name):
    # TFMOT prunes each layer to the schedule's sparsity: a whole-model average could hide an
    # unpruned layer behind an over-pruned one.
    sparsities = _layer_sparsities(fine_tuned[name][0])
    assert len(sparsities) == 19
    for layer, sparsity in sparsities.items():
        assert sparsity == pytest.approx(SPECS[name].sparsity, abs=0.02), layer


def test_schedules_follow_their_curves():
    timing = pruning_timing(steps=STEPS)
    mask_steps = range(timing.begin_step, timing.end_step + 1, timing.frequency)

    def curve(name):
        schedule = SCHEDULES[name].build(SPECS[name], timing)
        return [float(schedule(tf.constant(step, tf.int64))[1]) for step in mask_steps]

    assert curve("constant") == pytest.approx([0.5] * len(mask_steps))
    polynomial = curve("polynomial_decay")
    spec = SPECS["polynomial_decay"]
    assert polynomial[0] == pytest.approx(spec.initial_sparsity)  # starts at the initial sparsity
    assert polynomial[-1] == pytest.approx(spec.target_sparsity)  # and ends on the target, on a mask update
    assert all(a < b for a, b in zip(polynomial, polynomial[1:]))  # rising at every update
    # power 3: most of the pruning happens early, so halfway it is past the midpoint of the ramp
    halfway = polynomial[len(polynomial) // 2]
    assert halfway > (spec.initial_sparsity + spec.target_sparsity) / 2


def test_two_of_four_holds_in_every_layer_not_only_on_average(fine_tuned):
    # Every block of 4 along the input channels keeps at most 2 weights, so each layer whose input
    # channels are a multiple of 4 is exactly half zeros (at least; a pruned-away weight may be 0).
    model, _ = fine_tuned["2:4"]
    for layer in pruned_layers(model):
        sparsity = float(np.mean(layer.kernel.numpy() == 0.0))
        if layer.kernel.shape[2] % 4 == 0:
            assert 0.5 <= sparsity < 0.52, layer.name
        else:  # conv_0: 3 input channels, one partial block per output
            assert sparsity >= 1 / 3 - 1e-9, layer.name


def test_pruned_zeros_survive_conversion_and_shrink_the_gzip_size(fine_tuned):
    from search.objectives.size import gzip_size_bytes
    from search.quantize import convert

    dense = convert(fine_tuned["none"][0], mode="float32").content
    pruned = convert(fine_tuned["constant"][0], mode="float32").content
    # TFLite stores zeros densely: the same file size, but half the kernel bytes compress away.
    assert abs(len(pruned) - len(dense)) < 0.01 * len(dense)
    assert gzip_size_bytes(pruned) < 0.7 * gzip_size_bytes(dense)
