"""Filter pruning on every family cfg at 64 px: the thinner graph is valid, the rebuild is exact,
the target is reached, the schedule is followed, and every quantization mode converts the result.

The generated cfg and one mode stay in ``make test-fast``; the family cfgs (../shared/real) and
the other modes (seconds of conversion each) are ``slow``, as in test_opencv_parity.py."""

from __future__ import annotations

import numpy as np
import pytest

from search.compat import tf
from search.models import get_family
from search.models.darknet.cfg import parse_cfg_text
from search.models.darknet.network import IMAGE, Conv, Route, Shortcut, Yolo, read_network
from search.prune_filters import FilterMasks, filter_plan, filter_scores, prunable_filters, schedule_hook
from search.pruning import PruningSpec, pruning_timing
from search.quantize import QUANT_MODES, convert
from tests.models.darknet.common import ALL_OPTIONS_CFG, family_cfg, family_params, randomized

RESOLUTION = 64
TARGETS = [0.25, 0.5]
# The mode of the fast tier: int8 with the head convs found on the thinner network (the int8
# recipes' head_layers) and their kernels rewritten (dynamic range); plain int8 of a thin network
# runs every stage in test_stages.py.
FAST_MODE = "int8_dynamic_heads"


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfgs")
    (folder / "generated.cfg").write_text(ALL_OPTIONS_CFG)
    return folder


def _family(name: str, cfg_dir):
    return get_family("yolov4_tiny", cfg=cfg_dir / "generated.cfg" if name == "generated" else family_cfg(name))


def _wide(family, seed=0):
    return randomized(family.build(num_classes=2, resolution=RESOLUTION), seed)


def _images(count=8):
    """uint8 images, as training hands them to filter pruning's statistics."""
    return np.random.default_rng(2).integers(0, 256, (count, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)


def _masks(model, family, spec):
    return FilterMasks(model, filter_plan(model, spec, family=family), readers=family.channel_readers(model),
                       images=_images())


def _removed(model, family, target):
    """The filters the plan removes at ``target`` (chosen on the model's weights and a few images), without training."""
    masks = _masks(model, family, _spec(target))
    masks.update(1.0)
    return masks


def _spec(target, schedule="polynomial_decay"):
    return PruningSpec(schedule=schedule, target_sparsity=target, structure="filters")


def masked_reference(model, family, removed, images):
    """The wide ``model`` run layer by layer with the removed channels set to zero after their activation."""
    network = read_network(parse_cfg_text(family.architecture(model)["cfg"], source="wide"))
    names = {layer.name for layer in model.layers}
    gone = {}
    for conv, f in removed:
        gone.setdefault(int(conv.split("_")[1]), []).append(f)
    tensors = {IMAGE: tf.constant(images)}

    def call(name, x):
        return model.get_layer(name)(x, training=False) if name in names else x

    for layer in network.layers:
        i, op, x = layer.index, layer.op, [tensors[j] for j in layer.inputs]
        if isinstance(op, Conv):
            y = x[0]
            for name in (f"pad_{i}", f"conv_{i}", f"bn_{i}", f"{op.activation}_{i}"):
                y = call(name, y)
            keep = np.ones(op.filters, np.float32)
            keep[gone.get(i, [])] = 0.0
            y = y * keep
        elif isinstance(op, Route):
            y = call(f"route_{i}", x if len(x) > 1 else x[0])
        elif isinstance(op, Shortcut):
            y = call(f"{op.activation}_{i}", call(f"shortcut_{i}", x))
        elif isinstance(op, Yolo):
            y = x[0]
        else:
            y = call(f"{type(op).__name__.lower()}_{i}", x[0])
        tensors[i] = y
    return [tensors[yolo.index].numpy() for yolo in network.of(Yolo)]


@pytest.mark.parametrize("target", TARGETS)
def test_thin_generated_network_is_valid_exact_and_on_target(target, cfg_dir):
    _check_thin("generated", target, cfg_dir)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", family_params())
def test_thin_family_networks_are_valid_exact_and_on_target(name, target, cfg_dir):
    _check_thin(name, target, cfg_dir)


def _check_thin(name: str, target: float, cfg_dir) -> None:
    """The thinner network of cfg ``name`` at ``target``: valid, exact, on target, heads and widths kept."""
    family = _family(name, cfg_dir)
    wide = _wide(family)
    masks = _removed(wide, family, target)
    thin = family.thin(wide, masks.removed())
    dense = family.dense_layers(wide)
    # the graph is valid: its architecture reads back as a cfg (routes, groups, shortcuts fit) and rebuilds
    rebuilt = family.from_architecture(family.architecture(thin), resolution=RESOLUTION)
    rebuilt.set_weights(thin.get_weights())
    images = np.random.default_rng(1).uniform(0, 1, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    ours = [o.numpy() for o in thin(images, training=False)]
    for mine, again in zip(ours, rebuilt(images, training=False)):
        np.testing.assert_array_equal(mine, again.numpy())
    # exact: the wide model with the removed channels zeroed after their activation
    for mine, reference in zip(ours, masked_reference(wide, family, masks.removed(), images)):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-4)
    removed = prunable_filters(wide, dense_layers=dense) - prunable_filters(thin, dense_layers=dense)
    # within 2 points; the generated cfg has 144 removable filters taken 8 at a time: within half a step
    tolerance = 0.02 if name != "generated" else 4 / masks.plan.removable + 1e-9
    assert removed / masks.plan.removable == pytest.approx(target, abs=tolerance)
    for head in dense:  # the head convs keep their filters
        assert thin.get_layer(head).filters == wide.get_layer(head).filters
    if name != "generated":  # every family cfg's kept widths are multiples of 8
        widths = [thin.get_layer(c).filters for cluster in masks.plan.clusters for c in cluster.convs]
        assert widths and all(w % 8 == 0 for w in widths), widths
    assert thin.count_params() < wide.count_params()


def test_the_schedule_masks_gradually_and_reaches_the_target(cfg_dir):
    family = _family("generated", cfg_dir)
    wide = _wide(family)
    steps = 20
    spec = _spec(0.5)
    masks = _masks(wide, family, spec)
    hook = schedule_hook(masks, spec, steps=steps)
    counts = []
    for step in range(steps + 1):
        hook(step)
        counts.append(len(masks.removed()))
    final = sum(len(cluster.units[0]) * r for cluster, r in zip(masks.plan.clusters, masks.plan.removals))
    assert counts == sorted(counts) and counts[0] < counts[pruning_timing(steps=steps).end_step] == final
    assert len(set(counts)) > 2  # polynomial decay: several sizes on the way
    # the masked filters' outputs are zero: the kernel, bias and BN scale and offset of each
    for conv, f in masks.removed():
        assert not np.any(wide.get_layer(conv).get_weights()[0][..., f])


# Every reader of a prunable channel is a 1x1 conv, so folding a constant into it is exact (a 3x3
# conv's zero padding reads zeros at the borders, not the constant): through max-pool, a shortcut,
# a split, upsample and a concatenation; the head conv has a bias, not a BN.
CONSTANT_CFG = """
[net]
width=64
height=64
channels=3

# 0
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

# 1
[maxpool]
size=2
stride=2

# 2
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=0
activation=leaky

# 3
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=0
activation=leaky

# 4
[shortcut]
from=-2
activation=linear

# 5: the second half
[route]
layers=-1
groups=2
group_id=1

# 6
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=0
activation=leaky

# 7
[upsample]
stride=2

# 8
[route]
layers=-1,0

# 9
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=0
activation=leaky

# 10
[convolutional]
filters=21
size=1
stride=1
pad=0
activation=linear

# 11
[yolo]
mask=0,1,2
anchors=10,14,  23,27,  37,58
classes=2
num=3
"""
QUIET = [0, 1, 2, 3, 8, 9, 10, 11]  # half of each conv's filters, a quarter of each half of the split


def _quiet_model(family):
    """Random weights, but the QUIET filters of every BN conv output about 2 whatever the image (BN scale
    0.01, offset 2): the kind of filter YOLOv4-tiny has many of, carrying a constant the readers use."""
    model = _wide(family)
    for layer in model.layers:
        if layer.name.startswith("bn_"):
            gamma, beta, mean, variance = layer.get_weights()
            gamma[QUIET], beta[QUIET] = 0.01, 2.0
            layer.set_weights([gamma, beta, mean, variance])
    return model


def _constant_family(tmp_path):
    cfg = tmp_path / "constant.cfg"
    cfg.write_text(CONSTANT_CFG)
    return get_family("yolov4_tiny", cfg=cfg)


def test_split_halves_are_paired_by_output_spread_not_by_kernel(tmp_path):
    """BN normalises a kernel's scale away: a filter whose kernel is 1000x smaller (and its BN statistics to
    match) computes the same and must score the same; a filter whose output barely varies scores lowest.
    The BN-folded kernel L1 norm scored the shrunken filter 1000x lower."""
    family = _constant_family(tmp_path)
    model = _quiet_model(family)
    before = filter_scores(model, dense_layers=family.dense_layers(model))["conv_9"]
    conv, norm = model.get_layer("conv_9"), model.get_layer("bn_9")
    kernel = conv.get_weights()[0]
    kernel[..., 4] *= 1e-3
    conv.set_weights([kernel])
    gamma, beta, mean, variance = norm.get_weights()
    mean[4], variance[4] = mean[4] * 1e-3, variance[4] * 1e-6
    norm.set_weights([gamma, beta, mean, variance])
    after = filter_scores(model, dense_layers=family.dense_layers(model))["conv_9"]
    assert after[4] == pytest.approx(before[4], rel=1e-6)
    assert set(np.argsort(after)[: len(QUIET)]) == set(QUIET)


def _outputs_after_masking(family, original, images):
    """(the masked copy's outputs, the thin network's, the wide one with the removed channels merely
    zeroed, the masks) at 25% of the filters."""
    wide = _wide(family)
    wide.set_weights(original.get_weights())
    masks = _removed(wide, family, 0.25)
    masks.apply()
    thin = family.thin(wide, masks.removed())
    zeroed = masked_reference(original, family, masks.removed(), images)
    return [o.numpy() for o in wide(images, training=False)], [o.numpy() for o in thin(images, training=False)], \
        zeroed, masks


def _assert_kept(got, thinner, zeroed, expected, *, atol):
    for mine, thin, without, want in zip(got, thinner, zeroed, expected):
        error, error_without = np.abs(mine - want).max(), np.abs(without - want).max()
        np.testing.assert_allclose(thin, mine, rtol=0, atol=1e-4)  # the rebuild computes what the masks do
        assert error < 0.05 * error_without and error < atol, (error, error_without)


def test_filters_that_carry_a_constant_go_first_and_their_readers_keep_it(tmp_path):
    """The quiet filters (a quarter of the removable ones) are the cheapest to stand in for: they go, and
    their constant output is folded into the readers, so the masked and the thin network compute what the
    wide one did, to the quiet filters' small spread; zeroing them moves the outputs by far more."""
    family = _constant_family(tmp_path)
    original = _quiet_model(family)
    images = _images(2).astype(np.float32) / 255.0
    expected = [o.numpy() for o in original(images, training=False)]
    got, thinner, zeroed, masks = _outputs_after_masking(family, original, images)
    assert len(masks.removed()) >= 16 and {f for _, f in masks.removed()} <= set(QUIET)
    _assert_kept(got, thinner, zeroed, expected, atol=0.1)


def _twins_model(family):
    """Random weights, but every BN conv's filter 2k+1 a copy of filter 2k (kernel and BN): each channel
    has a twin its readers could read instead."""
    model = _wide(family)
    for layer in model.layers:
        if layer.name.startswith("bn_"):
            conv = model.get_layer(layer.name.replace("bn_", "conv_"))
            kernel = conv.get_weights()[0]
            kernel[..., 1::2] = kernel[..., 0::2]
            conv.set_weights([kernel])
            values = layer.get_weights()
            for v in values:
                v[1::2] = v[0::2]
            layer.set_weights(values)
    return model


def test_a_filter_with_a_twin_goes_and_its_readers_read_the_twin(tmp_path):
    """Removing one of two identical filters loses nothing when the readers read the other twice as hard:
    the least-squares fit finds that, and the choice never takes both twins."""
    family = _constant_family(tmp_path)
    original = _twins_model(family)
    images = _images(2).astype(np.float32) / 255.0
    expected = [o.numpy() for o in original(images, training=False)]
    got, thinner, zeroed, masks = _outputs_after_masking(family, original, images)
    removed = set(masks.removed())
    assert removed and not any((conv, f ^ 1) in removed for conv, f in removed)
    _assert_kept(got, thinner, zeroed, expected, atol=0.05)


@pytest.fixture(scope="module")
def thin_yolo():
    family = get_family("yolov4_tiny")
    wide = randomized(family.build(num_classes=2, resolution=RESOLUTION), 0)
    return family, family.thin(wide, _removed(wide, family, 0.5).removed())


@pytest.mark.parametrize("mode", [m if m == FAST_MODE else pytest.param(m, marks=pytest.mark.slow)
                                  for m, spec in QUANT_MODES.items() if not spec.needs_qat])
def test_every_mode_converts_the_thin_network(thin_yolo, mode):
    family, thin = thin_yolo
    spec = QUANT_MODES[mode]
    images = np.random.default_rng(0).uniform(0, 1, (4, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    result = convert(thin, mode=mode, calibration_images=images if spec.needs_calibration else None,
                     float_layers=1 if spec.selective else 0, head_layers=family.head_layers(thin))
    assert result.audit.passed, result.audit.problems
