"""TFLite's sparse tensor encoding (``convert(sparse_encoding=True)``): smaller where it pays, same outputs.

A tiny YOLOv4-tiny at 64 px with its weights zeroed by TFMOT's own magnitude pruning (one mask
update, ``search.prune.prune_at_once``), converted dense and with the option, in the modes the
option applies to; LiteRT runs both files on the same image.
"""

from __future__ import annotations

import numpy as np
import pytest

from types import SimpleNamespace

from search.models import get_family
from search.params import TrialParams
from search.space import load_space
from search.stages.convert import convert as convert_stage
from search.prune import measured_sparsity, prune_at_once
from search.pruning import PruningSpec
from search.quantize import QUANT_MODES, convert
from search.tflite_model import TFLiteDetector
from tests.quantize.conftest import CALIBRATION_IMAGES, RESOLUTION
from tests.test_space import ROOT

FAMILY = get_family("yolov4_tiny")
STRUCTURES = ("unstructured", "2:4")
# Float kernels: a non-zero and its index cost less than the dense tensor. int8 kernels with half
# zeros: the indices cost more than the zeros they replace, so the dense file is kept.
SPARSE_KEPT = ("float32", "float16")
DENSE_KEPT = ("dynamic_range", "int8")


@pytest.fixture(scope="module")
def pruned(model):
    """Each structure's 50%-pruned copy of the module's tiny model."""
    dense_layers = FAMILY.dense_layers(model)
    made = {}
    for structure in STRUCTURES:
        spec = PruningSpec(schedule="constant", target_sparsity=0.5 if structure == "unstructured" else 0.0,
                           structure=structure)
        made[structure] = prune_at_once(model, spec, dense_layers=dense_layers)
        assert measured_sparsity(made[structure], dense_layers=dense_layers) == pytest.approx(0.5, abs=0.01)
    return made


def _convert(model, mode: str, images, **options):
    calibration = images[:CALIBRATION_IMAGES] if QUANT_MODES[mode].needs_calibration else None
    return convert(model, mode=mode, calibration_images=calibration, **options)


def _outputs(content: bytes, image: np.ndarray) -> list[np.ndarray]:
    return TFLiteDetector(content)(image)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("mode", SPARSE_KEPT)
def test_sparse_encoding_shrinks_float_files_and_keeps_their_outputs(pruned, images, structure, mode):
    model = pruned[structure]
    dense = _convert(model, mode, images)
    sparse = _convert(model, mode, images, sparse_encoding=True)

    assert sparse.encoding == "sparse" and dense.encoding == "dense"
    assert len(sparse.content) < 0.95 * len(dense.content)
    assert sparse.other_encoding_bytes == len(dense.content)
    # Every pruned conv's kernel is stored sparse, and the audit names it.
    pruned_convs = [layer for layer in model.layers if layer.name.startswith("conv_")
                    and layer.name not in FAMILY.dense_layers(model)]
    assert len(sparse.audit.sparse_tensors) == len(pruned_convs)
    assert all("conv_" in name for name in sparse.audit.sparse_tensors)
    assert not dense.audit.sparse_tensors
    assert f"sparse {len(pruned_convs)}: " in sparse.summary() and "kept sparse encoding" in sparse.summary()
    # LiteRT loads it (DENSIFY at prepare) and computes what the dense file computes.
    image = images[CALIBRATION_IMAGES]
    for got, want in zip(_outputs(sparse.content, image), _outputs(dense.content, image), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("mode", DENSE_KEPT)
def test_sparse_encoding_keeps_the_dense_file_where_it_is_smaller(pruned, images, structure, mode):
    model = pruned[structure]
    dense = _convert(model, mode, images)
    tried = _convert(model, mode, images, sparse_encoding=True)

    assert tried.encoding == "dense" and not tried.audit.sparse_tensors
    assert len(tried.content) == len(dense.content)
    assert tried.other_encoding_bytes > len(dense.content)  # the sparse file was made, and was larger
    assert "kept dense encoding" in tried.summary() and "not smaller" in tried.summary()


def test_a_dense_model_is_unchanged_by_the_option(model, images):
    plain = _convert(model, "float32", images)
    tried = _convert(model, "float32", images, sparse_encoding=True)
    assert tried.encoding == "dense" and not tried.audit.sparse_tensors
    assert tried.content == plain.content


def test_the_option_is_refused_for_modes_that_do_not_run_one_converter_call(model, images):
    recipe = next(name for name, row in QUANT_MODES.items() if not row.sparse_encodable)
    with pytest.raises(ValueError, match="sparse_encoding applies to modes converted in one converter call"):
        _convert(model, recipe, images, sparse_encoding=True)


def test_prune_at_once_refuses_filters(model):
    spec = PruningSpec(schedule="constant", target_sparsity=0.5, structure="filters")
    with pytest.raises(ValueError, match="prune_at_once zeroes weights"):
        prune_at_once(model, spec, dense_layers=FAMILY.dense_layers(model))


@pytest.mark.parametrize("setting, zeroed, encoding", [(True, True, "sparse"), (False, True, "dense"),
                                                         (True, False, "dense")])
def test_the_trial_tries_the_encoding_when_the_space_asks_and_pruning_zeroed_weights(pruned, setting, zeroed,
                                                                                     encoding):
    space = load_space(ROOT / "spaces" / "smoke.yaml", (f"search.pruning.sparse_encoding={str(setting).lower()}",))
    params = TrialParams(resolution=RESOLUTION, pruning_schedule="constant", quantization="float16",
                         target_sparsity=0.5, pruning_structure="unstructured")
    made = convert_stage(pruned["unstructured"], params, SimpleNamespace(space=space), zeroed_weights=zeroed)
    assert made.encoding == encoding
    assert (made.other_encoding_bytes is not None) == (setting and zeroed)  # the record says what was compared


@pytest.fixture(scope="module")
def pruned_90(model):
    """90% unstructured: sparse enough for int8 kernels' indices to pay for themselves."""
    return prune_at_once(model, PruningSpec(schedule="constant", target_sparsity=0.9),
                         dense_layers=FAMILY.dense_layers(model))


def test_at_high_sparsity_int8_files_shrink_and_run_the_same(pruned_90, images):
    dense = _convert(pruned_90, "int8", images)
    sparse = _convert(pruned_90, "int8", images, sparse_encoding=True)
    assert sparse.encoding == "sparse" and len(sparse.content) < 0.5 * len(dense.content)
    image = images[CALIBRATION_IMAGES]
    for got, want in zip(_outputs(sparse.content, image), _outputs(dense.content, image), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_smaller_sparse_file_that_litert_cannot_prepare_is_not_kept(pruned_90, images):
    # XNNPACK refuses dynamic-range convs whose int8 kernels are sparse ("failed to delegate CONV_2D").
    tried = _convert(pruned_90, "dynamic_range", images, sparse_encoding=True)
    assert tried.other_encoding_bytes < 0.5 * len(tried.content)  # the sparse file was much smaller ...
    assert tried.encoding == "dense"  # ... and refused
    assert "LiteRT cannot prepare the sparse file" in tried.summary()
    TFLiteDetector(tried.content)(images[CALIBRATION_IMAGES])
