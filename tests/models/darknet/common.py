"""What the Darknet tests share: the family cfgs, a cfg using every supported option, random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).resolve().parents[4] / "shared" / "real"
FAMILY_DIR = REAL / "darknet" / "family"
FAMILY_CFGS = ("yolov4-tiny", "yolov4-tiny-3l", "yolov4-tiny-custom", "yolov3-tiny", "yolov7-tiny")


def family_params(*names: str) -> list:
    """One pytest param per family cfg, skipped with the reason when ``../shared/real`` lacks it."""
    return [pytest.param(name, marks=pytest.mark.skipif(not (FAMILY_DIR / f"{name}.cfg").is_file(),
                                                        reason=f"{FAMILY_DIR / name}.cfg not found (../shared/real is absent)"))
            for name in names or FAMILY_CFGS]


def family_cfg(name: str) -> Path:
    return FAMILY_DIR / f"{name}.cfg"


# Every section and option the builder supports, in a network small enough to run in milliseconds:
# strides 1..16, two heads, routes of one layer (relative and absolute), of several, of a group
# (first and second half), a shortcut, a depthwise and a grouped conv,
# every activation, 3x3 stride-1 and 2x2 stride-2 max-pools, a 5x5 stride-2 conv, an upsample.
ALL_OPTIONS_CFG = """
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
[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=mish

# 2: depthwise
[convolutional]
batch_normalize=1
filters=32
groups=32
size=3
stride=1
pad=1
activation=swish

# 3: grouped
[convolutional]
batch_normalize=1
filters=32
groups=2
size=1
stride=1
pad=1
activation=relu

# 4
[shortcut]
from=-3
activation=linear

# 5
[maxpool]
size=3
stride=1

# 6: the first half
[route]
layers=-1
groups=2
group_id=0

# 7: no batch norm: a bias
[convolutional]
filters=16
size=1
stride=1
pad=0
activation=leaky

# 8
[route]
layers=-1,4

# 9
[maxpool]
size=2
stride=2

# 10
[convolutional]
batch_normalize=1
filters=48
size=3
stride=2
pad=1
activation=leaky

# 11
[convolutional]
batch_normalize=1
filters=64
size=5
stride=2
pad=1
activation=leaky

# 12
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

# 13
[yolo]
mask=3,4,5
anchors=10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=2
num=6
scale_x_y=1.1
jitter=.3

# 14: one earlier layer, absolute
[route]
layers=11

# 15
[upsample]
stride=2

# 16
[route]
layers=-1,10

# 17: the second half
[route]
layers=-1
groups=2
group_id=1

# 18
[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=logistic

# 19
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

# 20
[yolo]
mask=0,1,2
anchors=10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=2
num=6
scale_x_y=1.1
jitter=.3
"""


def randomized(model, seed: int):
    """Distinct random weights of a size that keeps every activation near 1, BN statistics included."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if layer.name.startswith("bn_"):
            gamma, beta, mean, variance = (w.shape for w in weights)
            weights = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta),
                       rng.normal(0, 0.1, mean), rng.uniform(0.5, 1.5, variance)]  # fmt: skip
        else:
            kernel, *bias = weights
            fan_in = np.prod(kernel.shape[:2]) * (1 if type(layer).__name__ == "DepthwiseConv2D" else kernel.shape[2])
            weights = [rng.normal(0, 1 / np.sqrt(fan_in), kernel.shape), *(rng.normal(0, 0.1, b.shape) for b in bias)]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return model
