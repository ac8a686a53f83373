"""The latency reference matched to the trial's resolution and reference mode (its rung), on the
anchor's scale: which rung a trial gets, a rung's latency on the node as its link to the anchor x
the anchor's (measured once, then read from the node's cache), and a trial's record saying which
rung it was timed against. Tiny models stand in for the rungs (float32 and int8) and a 128 px int8
one for the anchor: the bookkeeping is under test, not the recipe (tests/timing/test_interleaved.py
builds that)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from search.errors import SpaceError
from search.quantize import QUANT_MODES, convert
from search.timing.reference import REFERENCE_MODES, reference_mode
from search.timing.rungs import LatencyReferences, Rung, node_rung_latency
from tests.helpers import tiny_model

ANCHOR = (128, "int8")  # the tests' anchor: the real one (256 px, 80 classes) costs seconds to build


def _converted(resolution: int, mode: str) -> bytes:
    images = np.random.default_rng(0).random((2, resolution, resolution, 3), dtype=np.float32)
    return convert(tiny_model(resolution=resolution), mode=mode,
                   calibration_images=images if QUANT_MODES[mode].needs_calibration else None).content


@pytest.fixture(scope="module")
def rungs():
    """The same network, seeded, at 64 and 96 px in both reference modes and the anchor: (resolution, mode) -> bytes."""
    return {(r, m): _converted(r, m) for r, m in [(64, "float32"), (96, "float32"), (64, "int8"), (96, "int8"), ANCHOR]}


def test_each_quantization_mode_is_timed_against_the_reference_mode_of_its_activations():
    # Every row's activation dtype has a reference mode: a new dtype in the table fails here, not in a trial.
    assert {mode.activation_dtype for mode in QUANT_MODES.values()} <= set(REFERENCE_MODES)
    assert [reference_mode(m) for m in ("float32", "float16", "dynamic_range")] == ["float32"] * 3
    assert [reference_mode(m) for m in ("int8", "int16x8", "qat_int8", "int8_dynamic_heads")] == ["int8"] * 4
    with pytest.raises(SpaceError, match="int8"):
        reference_mode("int9")


def test_a_trial_gets_the_rung_of_its_resolution_and_mode_else_the_nearest_of_that_mode():
    references = LatencyReferences({(64, "int8"): b"i64", (96, "int8"): b"i96", (256, "int8"): b"i256",
                                    (64, "float32"): b"f64", (160, "float32"): b"f160"})
    assert references.anchor == (256, "int8") and references.anchor_rung == Rung(256, "int8", b"i256")
    assert references.rung_for(96, "int8") == Rung(96, "int8", b"i96")  # exact
    assert references.rung_for(64, "float32") == Rung(64, "float32", b"f64")  # exact, the other mode
    assert references.rung_for(128, "int8").resolution == 96 and references.rung_for(224, "int8").resolution == 256
    assert references.rung_for(80, "int8").resolution == 96 and references.rung_for(176, "int8").resolution == 256  # ties: larger
    # The nearest of the same mode, never the other mode's nearer one.
    assert references.rung_for(96, "float32") == Rung(64, "float32", b"f64")
    assert references.rung_for(256, "float32") == Rung(160, "float32", b"f160")
    assert references.rung_for(112, "float32").resolution == 160  # a tie: the larger
    assert references.describe()["int8@96"] == {"sha256": hashlib.sha256(b"i96").hexdigest(), "bytes": 3}
    assert list(references.describe()) == ["float32@64", "float32@160", "int8@64", "int8@96", "int8@256"]


def test_a_mode_without_rungs_falls_back_to_int8_and_a_mode_that_is_no_reference_mode_is_refused():
    int8_only = LatencyReferences({(96, "int8"): b"i96", (256, "int8"): b"i256"})
    assert int8_only.rung_for(96, "float32") == Rung(96, "int8", b"i96")
    with pytest.raises(ValueError, match=r"must be one of float32, int8, but got 'dynamic_range'"):
        int8_only.rung_for(96, "dynamic_range")  # a quantization mode, not a reference mode: the caller's slip
    with pytest.raises(ValueError, match=r"the anchor's rung \(int8@256\) must be among the rungs, but got float32@256, "
                                         r"int8@96"):
        LatencyReferences({(96, "int8"): b"i96", (256, "float32"): b"f256"})


def test_a_rungs_latency_is_its_link_times_the_anchors_measured_once_and_kept(rungs, node_cache):
    small, anchor = Rung(64, "int8", rungs[64, "int8"]), rungs[ANCHOR]
    first = node_rung_latency(small, anchor, num_threads=1, seconds=1.0)
    again = node_rung_latency(small, anchor, num_threads=1, seconds=1.0)
    assert (first.cache, again.cache) == ("miss", "hit") and (first.anchor.cache, again.anchor.cache) == ("miss", "hit")
    assert again.link == first.link and again.anchor.median_ms == first.anchor.median_ms
    # 1/4 of the anchor's MACs, fixed costs aside; a pair of ~3 ms turns and the anchor's: dozens in a second
    assert 1 / 8 < first.link < 1 / 1.5 and first.link_pairs >= 20
    assert first.median_ms == pytest.approx(first.link * first.anchor.median_ms)
    assert first.sha256 == small.sha256 and first.anchor.sha256 == hashlib.sha256(anchor).hexdigest()
    # The anchor's own rung is the anchor's latency: link 1, nothing timed.
    own = node_rung_latency(Rung(*ANCHOR, anchor), anchor, num_threads=1, seconds=1.0)
    assert (own.link, own.link_pairs, own.median_ms) == (1.0, 0, first.anchor.median_ms)
    # One file for the anchor's latency, one for the link; another thread count is another link.
    assert len(list(node_cache.glob("reference-latency-*.json"))) == 1 and len(list(node_cache.glob("link-*.json"))) == 1
    assert node_rung_latency(small, anchor, num_threads=2, seconds=1.0).cache == "miss"


@pytest.mark.parametrize("resolution, mode, rung", [
    (64, "float32", (64, "float32")), (96, "int8", (96, "int8")), (96, "dynamic_range", (96, "float32")),
])
def test_a_trial_is_timed_against_the_rung_of_its_resolution_and_reference_mode(resolution, mode, rung, rungs,
                                                                                   node_cache):
    from search.objectives import Artifact, MeasureContext
    from search.objectives.latency import MEASUREMENT
    from search.space import MeasureSpec

    spec = MeasureSpec(latency_warmup=2, latency_min_runs=10, latency_min_seconds=0.5, latency_max_seconds=3.0,
                       latency_reference_seconds=0.5)
    context = MeasureContext(dataset=None, measure=spec, preprocessing="stretch", heads=None, num_threads=1,
                             reference=LatencyReferences(rungs, anchor=ANCHOR))
    images = np.random.default_rng(1).random((2, resolution, resolution, 3), dtype=np.float32)
    trial = convert(tiny_model(resolution=resolution, seed=1), mode=mode,  # other weights, same cost
                    calibration_images=images if QUANT_MODES[mode].needs_calibration else None).content
    values = MEASUREMENT.measure(Artifact(content=trial, model=None, resolution=resolution, mode=mode), context)
    assert set(values) == set(MEASUREMENT.columns)
    assert (values["latency_ref_resolution"], values["latency_ref_mode"]) == rung
    assert values["latency_ref_sha256"] == hashlib.sha256(rungs[rung]).hexdigest()
    assert values["latency_ms"] == pytest.approx(values["latency_ref_ratio"] * values["latency_ref_ms"])
    assert values["latency_ref_ms"] == pytest.approx(values["latency_ref_link"] * values["latency_anchor_ms"])
    assert values["latency_p90_ms"] >= values["latency_ms"]
    if mode != "dynamic_range":  # the same network in the same mode: as costly as its rung
        assert 0.7 < values["latency_ref_ratio"] < 1.4
    said = MEASUREMENT.how(spec, values)
    assert f"at {resolution} px, " in said and f"{rung[1]}" in said and "anchor" in said
