"""Drift-free latency: the model's invokes alternate with a fixed reference's, and the reported
latency is the median per-pair ratio times the reference's latency on the node (measured once,
kept on the node; the reference at each resolution: tests/timing/test_rungs.py). Stability
itself is the benchmark's (benchmarks/latency_stability.py), not a timed assertion here: these
check the direction and rough size of ratios and the bookkeeping."""

from __future__ import annotations

import hashlib

import pytest

from search.timing import reference
from search.timing.interleaved import measure_interleaved
from search.quantize import convert
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def small_and_large():
    """The same network (same seeded weights) at 64 and 128 px, float32: 4x the MACs."""
    return (convert(tiny_model(resolution=64), mode="float32").content,
            convert(tiny_model(resolution=128), mode="float32").content)


def test_the_ratio_says_which_model_is_slower_and_by_about_how_much(small_and_large):
    small, large = small_and_large
    up = measure_interleaved(large, small, warmup=2, min_runs=20, min_seconds=1.0, max_seconds=5.0)
    down = measure_interleaved(small, large, warmup=2, min_runs=20, min_seconds=1.0, max_seconds=5.0)
    # 4x the multiply-accumulates; fixed per-invoke costs make it a little less at these sizes.
    assert 2.0 < up.ratio < 6.0, up
    assert 1 / 6.0 < down.ratio < 1 / 2.0, down
    assert up.ratio * down.ratio == pytest.approx(1.0, rel=0.25)  # the same pairs seen from both sides
    assert up.ratio_p90 >= up.ratio and up.pairs >= 20 and up.seconds >= 1.0
    assert up.median_ms > up.reference_median_ms  # the raw medians agree with the ratio's direction


def test_the_window_is_split_over_fresh_pairs_of_interpreters(small_and_large, monkeypatch):
    # One pair of interpreters keeps its ratio, a new pair's can sit a few percent elsewhere, so the
    # ratios of several fresh pairs are pooled (SESSIONS); the runs and seconds are shared out.
    import search.tflite_model

    made = []
    real = search.tflite_model.load_interpreter
    monkeypatch.setattr(search.tflite_model, "load_interpreter", lambda *a, **k: made.append(1) or real(*a, **k))
    stats = measure_interleaved(*small_and_large, warmup=1, min_runs=12, min_seconds=0.6, max_seconds=3.0, sessions=3)
    assert len(made) == 6  # the model and the reference, three times
    assert stats.pairs >= 12 and stats.seconds >= 0.6


def test_interleaved_refuses_meaningless_settings(small_and_large):
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        measure_interleaved(*small_and_large, min_seconds=5.0, max_seconds=1.0)
    with pytest.raises(ValueError, match="sessions must be >= 1, but got 0"):
        measure_interleaved(*small_and_large, sessions=0)


def test_the_reference_latency_is_measured_once_per_node_and_kept(small_and_large, node_cache):
    small, _ = small_and_large
    first = reference.node_reference_latency(small, num_threads=1, seconds=0.5)
    again = reference.node_reference_latency(small, num_threads=1, seconds=0.5)
    assert (first.cache, again.cache) == ("miss", "hit")
    assert again.median_ms == first.median_ms and first.sha256 == hashlib.sha256(small).hexdigest()
    assert first.seconds >= 0.5 and first.litert not in ("", "none")
    # Another thread count is another number: measured anew, in a file of its own.
    assert reference.node_reference_latency(small, num_threads=2, seconds=0.5).cache == "miss"
    assert len(list(node_cache.glob("reference-latency-*.json"))) == 2


@pytest.mark.slow
def test_the_reference_is_built_the_same_every_time(tmp_path):
    # Every node must time the same file; the driver ships its bytes, and a rebuild (another run,
    # another machine with the same packages) must give the same ones for the node caches to agree.
    built = reference.build_reference(96, "int8")
    assert reference.build_reference(96, "int8") == built
    assert reference.reference_model(96, "int8", tmp_path) == built
    assert reference.reference_model(96, "int8", tmp_path) == built
    # Each resolution and mode is a file of its own in the cache (the rungs: search.timing.rungs).
    assert reference.reference_model(64, "int8", tmp_path) != built
    assert reference.reference_model(96, "float32", tmp_path) != built
    assert len(list(tmp_path.glob("reference-*.tflite"))) == 3


def test_a_reference_resolution_the_network_cannot_take_or_a_mode_it_has_no_recipe_for_is_refused():
    with pytest.raises(ValueError, match="must be a multiple of 32 from 32 up, but got 0"):
        reference.reference_model(0, "int8")
    with pytest.raises(ValueError, match="mode must be one of float32, int8, but got 'int16x8'"):
        reference.reference_model(96, "int16x8")
