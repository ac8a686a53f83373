"""The latency reference matched to the trial's resolution (its rung), on the anchor's scale: which
rung a trial gets, a rung's latency on the node as its link to the anchor x the anchor's (measured
once, then read from the node's cache), and a trial's record saying which rung it was timed against.
Tiny float32 models stand in for the rungs and a 128 px one for the anchor: the bookkeeping is
under test, not the recipe (tests/timing/test_interleaved.py builds that)."""

from __future__ import annotations

import hashlib

import pytest

from search.quantize import convert
from search.timing.rungs import LatencyReferences, Rung, node_rung_latency
from tests.helpers import tiny_model

ANCHOR = 128  # the tests' anchor: the real one (256 px, 80 classes) costs seconds to build


@pytest.fixture(scope="module")
def rungs():
    """The same network at 64, 96 and 128 px, float32, seeded: resolution -> bytes."""
    return {r: convert(tiny_model(resolution=r), mode="float32").content for r in (64, 96, ANCHOR)}


def test_a_trial_gets_the_rung_of_its_resolution_else_the_nearest_the_larger_on_a_tie():
    references = LatencyReferences({64: b"64", 96: b"96", 256: b"256"})
    assert references.anchor == 256 and references.anchor_rung == Rung(256, b"256")
    assert references.rung_for(96) == Rung(96, b"96")  # exact
    assert references.rung_for(128).resolution == 96 and references.rung_for(224).resolution == 256  # nearest
    assert references.rung_for(80).resolution == 96 and references.rung_for(176).resolution == 256  # ties: larger
    assert references.rung_for(32).resolution == 64 and references.rung_for(608).resolution == 256
    assert references.describe()["96"] == {"sha256": hashlib.sha256(b"96").hexdigest(), "bytes": 2}
    with pytest.raises(ValueError, match=r"the anchor's rung \(256 px\) must be among the rungs, but got \[64, 96\]"):
        LatencyReferences({64: b"64", 96: b"96"})


def test_a_rungs_latency_is_its_link_times_the_anchors_measured_once_and_kept(rungs, node_cache):
    small, anchor = Rung(64, rungs[64]), rungs[ANCHOR]
    first = node_rung_latency(small, anchor, num_threads=1, seconds=0.5)
    again = node_rung_latency(small, anchor, num_threads=1, seconds=0.5)
    assert (first.cache, again.cache) == ("miss", "hit") and (first.anchor.cache, again.anchor.cache) == ("miss", "hit")
    assert again.link == first.link and again.anchor.median_ms == first.anchor.median_ms
    assert 1 / 8 < first.link < 1 / 1.5 and first.link_pairs >= 50  # 1/4 of the anchor's MACs, fixed costs aside
    assert first.median_ms == pytest.approx(first.link * first.anchor.median_ms)
    assert first.sha256 == small.sha256 and first.anchor.sha256 == hashlib.sha256(anchor).hexdigest()
    # The anchor's own rung is the anchor's latency: link 1, nothing timed.
    own = node_rung_latency(Rung(ANCHOR, anchor), anchor, num_threads=1, seconds=0.5)
    assert (own.link, own.link_pairs, own.median_ms) == (1.0, 0, first.anchor.median_ms)
    # One file for the anchor's latency, one for the link; another thread count is another link.
    assert len(list(node_cache.glob("reference-latency-*.json"))) == 1 and len(list(node_cache.glob("link-*.json"))) == 1
    assert node_rung_latency(small, anchor, num_threads=2, seconds=0.5).cache == "miss"


@pytest.mark.parametrize("resolution", [64, 96])
def test_a_trial_at_a_resolution_is_timed_against_that_rung(resolution, rungs, node_cache):
    from search.objectives import Artifact, MeasureContext
    from search.objectives.latency import MEASUREMENT
    from search.space import MeasureSpec

    spec = MeasureSpec(latency_warmup=2, latency_min_runs=10, latency_min_seconds=0.5, latency_max_seconds=3.0,
                       latency_reference_seconds=0.5)
    context = MeasureContext(dataset=None, measure=spec, preprocessing="stretch", heads=None, num_threads=1,
                             reference=LatencyReferences(rungs, anchor=ANCHOR))
    trial = convert(tiny_model(resolution=resolution, seed=1), mode="float32").content  # other weights, same cost
    values = MEASUREMENT.measure(Artifact(content=trial, model=None, resolution=resolution, mode="float32"), context)
    assert set(values) == set(MEASUREMENT.columns)
    assert values["latency_ref_resolution"] == resolution
    assert values["latency_ref_sha256"] == hashlib.sha256(rungs[resolution]).hexdigest()
    assert values["latency_ms"] == pytest.approx(values["latency_ref_ratio"] * values["latency_ref_ms"])
    assert values["latency_ref_ms"] == pytest.approx(values["latency_ref_link"] * values["latency_anchor_ms"])
    assert 0.7 < values["latency_ref_ratio"] < 1.4 and values["latency_ref_link"] < 1  # as costly as its rung
    assert values["latency_p90_ms"] >= values["latency_ms"]
    said = MEASUREMENT.how(spec, values)
    assert f"at {resolution} px" in said and "anchor" in said
