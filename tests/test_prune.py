"""TFMOT pruning of YOLOv4-tiny: real wrappers, real fine-tunes at 64 px, real TFLite conversion."""

import numpy as np
import pytest

from search.compat import keras, tf
from search.errors import SpaceError
from search.model.yolov4_tiny import build_yolov4_tiny
from search.prune import (
    SCHEDULES,
    UNPRUNED_CONVS,
    PruningSpec,
    is_pruned_layer,
    measured_sparsity,
    prune,
    prune_and_fine_tune,
    pruning_timing,
)

RESOLUTION = 64
NUM_CLASSES = 2
STEPS = 20

SPECS = {
    "none": PruningSpec(),
    "constant": PruningSpec(schedule="constant", target_sparsity=0.5),
    "polynomial_decay": PruningSpec(schedule="polynomial_decay", target_sparsity=0.6, initial_sparsity=0.1),
    "2:4": PruningSpec(schedule="polynomial_decay", structure="2:4"),  # TFMOT ignores the schedule here
}


@pytest.fixture(scope="module")
def base_model():
    keras.utils.set_random_seed(0)
    return build_yolov4_tiny(num_classes=NUM_CLASSES, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def fine_tuned(base_model):
    """Each spec fine-tuned once for STEPS steps: name -> (stripped model, measured sparsity)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    boxes = [np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)] * 4
    classes = [np.array([i % NUM_CLASSES], np.int32) for i in range(4)]
    before = [w.copy() for w in base_model.get_weights()]
    results = {
        name: prune_and_fine_tune(
            base_model, spec, steps=STEPS, images=images, boxes=boxes, classes=classes,
            num_classes=NUM_CLASSES, batch_size=2,
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


def test_none_fine_tunes_without_pruning(fine_tuned, base_model):
    model, sparsity = fine_tuned["none"]
    assert sparsity < 0.01
    assert not np.array_equal(model.get_layer("conv_2").kernel.numpy(), base_model.get_layer("conv_2").kernel.numpy())


def test_two_of_every_four_input_channels_are_zero(fine_tuned):
    model, _ = fine_tuned["2:4"]
    checked = 0
    for layer in filter(is_pruned_layer, model.layers):
        kernel = layer.kernel.numpy()  # (h, w, in, out): blocks run along the input channels
        rows = np.transpose(kernel, (3, 0, 1, 2)).reshape(-1, kernel.shape[2])
        rows = np.pad(rows, ((0, 0), (0, -rows.shape[1] % 4)))
        nonzero_per_block = np.count_nonzero(rows.reshape(rows.shape[0], -1, 4), axis=2)
        assert nonzero_per_block.max() <= 2, layer.name
        checked += 1
    assert checked == 19  # all 21 convs but the two head outputs


def test_head_output_convs_are_not_pruned(fine_tuned):
    model, _ = fine_tuned["constant"]
    for name in UNPRUNED_CONVS:
        assert np.count_nonzero(model.get_layer(name).kernel.numpy() == 0) == 0


def test_stripped_model_keeps_its_outputs_and_converts_to_tflite(fine_tuned, base_model):
    model, _ = fine_tuned["constant"]
    assert [layer.name for layer in model.layers] == [layer.name for layer in base_model.layers]
    assert [tuple(o.shape) for o in model.outputs] == [tuple(o.shape) for o in base_model.outputs]
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert len(flatbuffer) > 100_000


def test_wrapped_clone_computes_what_the_model_computes(base_model):
    pruned = prune(base_model, SPECS["constant"], steps=STEPS)
    assert sum(layer.name.startswith("prune_low_magnitude_conv_") for layer in pruned.layers) == 19
    images = np.random.default_rng(1).uniform(0, 1, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    for ours, theirs in zip(pruned(images, training=False), base_model(images, training=False)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_too_few_steps_raises_space_error(base_model):
    with pytest.raises(SpaceError, match="at least 10 fine-tune steps"):
        prune(base_model, SPECS["constant"], steps=5)


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
