"""Distillation from the unpruned base model in the fine-tune: the loss, the loop, and every kind of
student (TFMOT pruning wrappers, masked filters, QAT), on real YOLOv4-tiny at 64 px."""

import numpy as np
import pytest

from search.compat import keras, tf
from search.models import get_family
from search.prune import prune_and_fine_tune
from search.pruning import PruningSpec
from search.train import Distillation, distillation_loss, train
from tests.helpers import training_set

RESOLUTION = 64
NUM_CLASSES = 2
FAMILY = get_family("yolov4_tiny")
HEADS = FAMILY.heads(NUM_CLASSES)
STEPS = 10  # the fewest a pruning schedule accepts


def _model(seed: int):
    keras.utils.set_random_seed(seed)
    return FAMILY.build(num_classes=NUM_CLASSES, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def data():
    return training_set(8, resolution=RESOLUTION, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def teacher():
    """A network whose heads say something: random init predicts almost nothing anywhere, so its
    output convs get biases of a trained model's spread (objects here, none there, boxes of sizes)."""
    model = _model(1)
    rng = np.random.default_rng(1)
    for name in FAMILY.dense_layers(model):
        bias = model.get_layer(name).bias
        bias.assign(rng.normal(0.0, 2.0, bias.shape).astype(np.float32))
    return model


def _distance(student, teacher, images) -> float:
    x = tf.constant(images.astype(np.float32) / 255.0)
    return float(distillation_loss(student(x, training=False), teacher(x, training=False), heads=HEADS,
                                   resolution=RESOLUTION))


def _weights_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_distillation_loss_is_zero_at_the_teacher_and_positive_elsewhere(teacher, data):
    assert _distance(teacher, teacher, data["images"]) == pytest.approx(0.0, abs=1e-3)
    assert _distance(_model(0), teacher, data["images"]) > 1.0


def test_distillation_changes_the_training(teacher, data):
    runs = {}
    for name, distill in {"plain": None, "distilled": Distillation(teacher, 1.0)}.items():
        student = _model(0)
        runs[name] = (student, train(student, heads=HEADS, steps=3, batch_size=4, seed=0, distill=distill, **data))
    # the first loss already holds the distance to the teacher; the weights then move elsewhere
    assert runs["distilled"][1][0] > runs["plain"][1][0]
    assert not _weights_equal(runs["distilled"][0], runs["plain"][0])


def test_the_student_moves_toward_the_teacher(teacher, data):
    before = _distance(_model(0), teacher, data["images"])
    after = {}
    for weight in (0.0, 5.0):
        student = _model(0)
        train(student, heads=HEADS, steps=30, batch_size=4, learning_rate=1e-3, seed=0,
              distill=Distillation(teacher, weight) if weight else None, **data)
        after[weight] = _distance(student, teacher, data["images"])
    # measured: 278 before, 160 distilled, 293 after plain training
    assert after[5.0] < before * 0.75 and after[5.0] < after[0.0] * 0.75, (before, after)


def test_a_weight_of_zero_or_below_is_refused(teacher):
    for weight in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"distillation weight must be > 0, but got {weight}"):
            Distillation(teacher, weight)


@pytest.mark.parametrize("spec", [PruningSpec(schedule="constant", target_sparsity=0.5),
                                  PruningSpec(schedule="polynomial_decay", target_sparsity=0.5, structure="filters")],
                         ids=["unstructured", "filters"])
def test_pruning_fine_tunes_distil_from_the_unpruned_model(spec, data):
    base = _model(0)
    before = [w.copy() for w in base.get_weights()]
    results = {
        weight: prune_and_fine_tune(base, spec, steps=STEPS, dense_layers=FAMILY.dense_layers(base), heads=HEADS,
                                    batch_size=4, learning_rate=1e-3, family=FAMILY, distill_weight=weight, **data)
        for weight in (0.0, 1.0)
    }
    assert all(np.array_equal(a, b) for a, b in zip(before, base.get_weights()))  # the teacher is never trained
    (plain, plain_sparsity), (distilled, sparsity) = results[0.0], results[1.0]
    assert sparsity == pytest.approx(plain_sparsity) and sparsity == pytest.approx(0.5, abs=0.05)
    assert [w.shape for w in distilled.get_weights()] == [w.shape for w in plain.get_weights()]
    assert not _weights_equal(distilled, plain)
    # the wide teacher against a thinner (or zeroed) student: the distillation pulled it closer
    assert _distance(distilled, base, data["images"]) < _distance(plain, base, data["images"])


def test_qat_distils_from_a_teacher(teacher, data):
    from search.qat import quantize_aware_fine_tune

    student = _model(0)
    qat = {
        weight: quantize_aware_fine_tune(student, heads=HEADS, split_layers=FAMILY.channel_split_layers(student),
                                         preserve_sparsity=False, steps=3, batch_size=4, learning_rate=1e-3,
                                         distill=Distillation(teacher, weight) if weight else None, **data)
        for weight in (0.0, 1.0)
    }
    assert not _weights_equal(qat[1.0], qat[0.0])
    assert _distance(qat[1.0], teacher, data["images"]) < _distance(qat[0.0], teacher, data["images"])


@pytest.mark.slow
def test_a_distilling_trial_prunes_filters_fine_tunes_with_qat_and_its_card_says_so(tmp_path):
    from search.export import fine_tune_card
    from search.trial import TrialParams, run_trial
    from tests.helpers import smoke_trial_context

    context = smoke_trial_context(tmp_path, "fine_tune.distill_weight=1")
    params = TrialParams(resolution=64, pruning_schedule="polynomial_decay", target_sparsity=0.5,
                         pruning_structure="filters", quantization="qat_int8")
    out = tmp_path / "trial"
    out.mkdir()
    result = run_trial(params, context, out_dir=out)
    assert result.sparsity == pytest.approx(0.5, abs=0.05) and (out / "model.tflite").stat().st_size > 0
    card = fine_tune_card(context.space)
    assert card["distill_weight"] == 1.0 and "unpruned base model" in card["distilled_from"]
    (tmp_path / "plain").mkdir()
    assert fine_tune_card(smoke_trial_context(tmp_path / "plain").space)["distilled_from"] is None
