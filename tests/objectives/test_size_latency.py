"""Size (raw, gzip) and latency of real converted models."""

from __future__ import annotations

import time

import numpy as np
import pytest

from search.objectives.latency import cpu_model, measure_latency
from search.objectives.size import gzip_size_bytes, size_bytes
from search.compat import keras
from search.models.yolov4_tiny.builder import build_yolov4_tiny
from search.quantize import convert

RESOLUTION = 64


@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(2)
    return build_yolov4_tiny(num_classes=2, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def dense_content(dense_model):  # float32 YOLOv4-tiny at 64 px: ~2 ms an invoke
    return convert(dense_model, mode="float32").content


def _small_conv_model(*, zero_fraction: float):
    """A 370k-parameter conv stack with ``zero_fraction`` of every kernel set to zero at random.

    Small on purpose: gzip -9 spends ~20 s on a 23 MB half-zero YOLOv4-tiny, and the property
    under test is the same at any size.
    """
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (64, 128, 256):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(8, 1)(x))
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * (rng.random(kernel.shape) >= zero_fraction), bias])
    return model


def test_size_is_the_file_size(dense_content, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(dense_content)
    assert size_bytes(dense_content) == path.stat().st_size


def test_gzip_shows_unstructured_sparsity():
    dense = convert(_small_conv_model(zero_fraction=0.0), mode="float32").content
    sparse = convert(_small_conv_model(zero_fraction=0.5), mode="float32").content
    # Zeros are stored densely: pruning alone does not shrink the file ...
    assert abs(size_bytes(sparse) - size_bytes(dense)) < 0.001 * size_bytes(dense)  # names differ a little
    # ... but compresses: random float weights barely do, half-zero ones lose about a third.
    assert gzip_size_bytes(dense) > 0.85 * size_bytes(dense)
    assert gzip_size_bytes(sparse) < 0.7 * size_bytes(sparse)
    assert gzip_size_bytes(sparse) == gzip_size_bytes(bytes(sparse))  # deterministic (mtime=0)


def test_latency_stats_are_positive_and_ordered(dense_content):
    stats = measure_latency(dense_content, num_threads=1, warmup=2, min_runs=10, min_seconds=0.2, max_seconds=5.0)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.runs >= 10 or stats.median_ms * stats.runs > 4000  # stopped by the time limit
    assert stats.spread >= 0
    assert stats.num_threads == 1
    assert stats.cpu_model == cpu_model() and stats.cpu_model != ""


def test_latency_of_an_int8_io_model(dense_model):
    images = np.random.default_rng(2).random((4, RESOLUTION, RESOLUTION, 3), dtype=np.float32)
    content = convert(dense_model, mode="int8", calibration_images=images, int8_io=True).content
    stats = measure_latency(content, num_threads=2, warmup=1, min_runs=5, min_seconds=0.0, max_seconds=5.0)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.num_threads == 2


def test_latency_stops_at_max_seconds(dense_content):
    start = time.perf_counter()
    stats = measure_latency(dense_content, warmup=0, min_runs=10**6, min_seconds=0.0, max_seconds=0.5)
    assert time.perf_counter() - start < 5.0
    assert 1 <= stats.runs < 10**6


def test_latency_times_at_least_min_seconds_on_pinned_cores(dense_content):
    import os

    before = os.sched_getaffinity(0)
    stats = measure_latency(dense_content, warmup=0, min_runs=1, min_seconds=0.6, max_seconds=5.0)
    assert stats.seconds >= 0.6 and stats.runs > 1
    assert stats.cpus == str(max(before))  # one thread: the last core this process may use
    assert os.sched_getaffinity(0) == before  # and the process may use all of them again


def test_the_quieter_half_of_the_blocks_is_reported():
    from search.objectives.latency import quiet_half

    # Eight 0.5 s blocks of ten invokes: the odd ones disturbed (twice as slow).
    starts = [block * 0.5 + k * 0.04 for block in range(8) for k in range(10)]
    times = [20.0 if int(start // 0.5) % 2 else 10.0 for start in starts]
    assert quiet_half(times, starts) == [10.0] * 40
    # Too few blocks to tell quiet from disturbed: everything counts.
    assert quiet_half(times[:30], starts[:30]) == times[:30]


def test_the_reported_median_is_over_the_quieter_blocks(dense_content):
    stats = measure_latency(dense_content, warmup=1, min_runs=1, min_seconds=2.5, max_seconds=5.0)
    assert stats.reported_runs <= stats.runs and stats.reported_runs >= stats.runs // 3
    assert stats.median_ms <= stats.median_all_ms * 1.001  # the quieter half is never the slower


def test_latency_refuses_meaningless_settings(dense_content):
    with pytest.raises(ValueError, match="min_runs >= 1"):
        measure_latency(dense_content, min_runs=0)
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        measure_latency(dense_content, min_seconds=5.0, max_seconds=1.0)
