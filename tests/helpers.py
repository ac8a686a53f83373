"""Small builders several test modules share (no fixtures: each module scopes its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(*, num_classes: int = 3, resolution: int = 64, seed: int = 0):
    """The stock family's network with seeded random weights."""
    from search.compat import keras
    from search.models import get_family

    keras.utils.set_random_seed(seed)
    return get_family("yolov4_tiny").build(num_classes=num_classes, resolution=resolution)


def random_images(count: int, *, resolution: int = 64, seed: int = 0) -> np.ndarray:
    """``count`` float32 images in [0, 1], as the model and the calibrator take them."""
    return np.random.default_rng(seed).random((count, resolution, resolution, 3), dtype=np.float32)


def training_set(count: int, *, resolution: int, num_classes: int, seed: int = 0) -> dict:
    """``count`` random uint8 images, each with one box and a class id, as ``train`` takes them."""
    images = np.random.default_rng(seed).integers(0, 256, (count, resolution, resolution, 3), dtype=np.uint8)
    boxes = [np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)] * count
    classes = [np.array([i % num_classes], np.int32) for i in range(count)]
    return {"images": images, "boxes": boxes, "classes": classes}


def smoke_trial_context(tmp: Path, *overrides: str):
    """A TrialContext on the smoke space (10 fine-tune steps) with untrained base weights: the
    pipeline, not the accuracy, is under test."""
    from search.inputs import load_data
    from search.space import load_space
    from search.trial import TrialContext

    space = load_space(ROOT / "spaces" / "smoke.yaml", (f"storage.cache_dir={tmp / 'cache'}", "fine_tune.steps=10", *overrides))
    dataset = load_data(space)
    weights = tmp / "base.h5"
    tiny_model(num_classes=dataset.num_classes).save_weights(str(weights))
    return TrialContext(space=space, dataset=dataset, base_weights=str(weights), stages_dir=str(tmp / "stages"))
