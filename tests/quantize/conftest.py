"""What the quantization tests convert: one tiny YOLOv4-tiny and seeded images (each module makes its own)."""

from __future__ import annotations

import pytest

from tests.helpers import random_images, tiny_model

RESOLUTION = 64  # YOLOv4-tiny at 64 px converts in seconds and keeps every op of the full-size network
NUM_CLASSES = 3
CALIBRATION_IMAGES = 16  # images[:16] calibrate; images[16] is one no mode was calibrated on


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_classes=NUM_CLASSES, resolution=RESOLUTION, seed=0)


@pytest.fixture(scope="module")
def images():
    return random_images(CALIBRATION_IMAGES + 1, resolution=RESOLUTION, seed=0)
