"""Step 3: convert to TFLite in the trial's mode, calibrating on training images when it needs to.

The converted flatbuffer is audited inside ``search.quantize.convert``: a model that is not what
its mode says fails the trial. (The per-layer quantization error report is made for the exported
trial only: ``search.export``.)
"""

from __future__ import annotations

import numpy as np

from search.data.dataset import Split
from search.params import TrialParams


def calibration_indices(num_train: int, *, size: int, seed: int) -> np.ndarray:
    """Which ``size`` of the ``num_train`` training images calibrate: drawn by ``seed``, sorted.

    The same seed and size give the same images in every trial, so trials that differ only in
    calibration size differ in nothing else.
    """
    if size > num_train:
        raise ValueError(f"calibration_size must be <= {num_train} training images, but got {size}.")
    return np.sort(np.random.default_rng(seed).choice(num_train, size=size, replace=False))


def calibration_images(train: Split, *, size: int, seed: int, resolution: int, preprocessing: str) -> np.ndarray:
    """Exactly ``size`` training images (``calibration_indices``), preprocessed as for evaluation,
    as float32 in [0, 1]. Only those images are decoded, so a trial that does not fine-tune
    never preprocesses the whole training split.
    """
    from search.data.preprocess import split_arrays

    picked = calibration_indices(len(train), size=size, seed=seed)
    subset = Split(name=train.name, examples=tuple(train.examples[i] for i in picked))
    return split_arrays(subset, resolution=resolution, mode=preprocessing).images.astype(np.float32) / 255.0


def trial_calibration_images(params: TrialParams, context) -> np.ndarray | None:
    """The images the trial's mode calibrates on, or None for a mode that does not calibrate."""
    if not params.calibration_size:
        return None
    space = context.space
    return calibration_images(context.dataset.train, size=params.calibration_size, seed=space.budget.seed,
                              resolution=params.resolution, preprocessing=space.data.preprocessing)


def convert(model, params: TrialParams, context, *, zeroed_weights: bool = False):
    """The audited ``search.quantize.ConvertedModel`` of ``model`` in the trial's mode.

    ``zeroed_weights``: the kernels hold pruning's zeros (unstructured or 2:4), so with the space's
    ``search.pruning.sparse_encoding`` the sparse tensor encoding is tried too, in the modes it
    applies to, and the smaller file kept (the record's ``audit`` says which).
    """
    from search.models import family_of
    from search.quantize import QUANT_MODES
    from search.quantize import convert as convert_model

    sparse = (zeroed_weights and context.space.search.sparse_encoding
              and QUANT_MODES[params.quantization].sparse_encodable)
    return convert_model(model, mode=params.quantization, calibration_images=trial_calibration_images(params, context),
                         float_layers=params.float_layers or 0,
                         head_layers=family_of(context.space.model).head_layers(model), sparse_encoding=sparse)
