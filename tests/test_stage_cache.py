"""The prune + fine-tune stage cache: computed once across processes, shared by trials, never stuck."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from search.stage_cache import CARD, WEIGHTS, cached_stage
from search.stages.fine_tune import pruning_spec, stage_key
from search.trial import TrialContext, TrialParams, run_trial
from tests.helpers import smoke_trial_context

ARCHITECTURE = {"family": "test", "widths": [8]}  # what a real stage stores beside its weights

ROOT = Path(__file__).resolve().parents[1]

# A process that asks for one stage whose computation takes a while and counts itself.
COMPETITOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from search.stage_cache import cached_stage

    root, counter = sys.argv[1], Path(sys.argv[2])  # a folder or an object-store URI

    def compute(weights):
        with counter.open("a") as f:
            f.write("computed\\n")
        time.sleep(2.0)
        weights.write_bytes(b"weights")
        return {"sparsity": 0.5, "architecture": {"family": "test"}}

    stage = cached_stage(root, "k", compute, poll_s=0.1)
    print("hit" if stage.hit else "miss", stage.sparsity, stage.weights.read_bytes().decode())
""")


def test_two_processes_needing_the_same_stage_compute_it_once(tmp_path):
    counter = tmp_path / "count.txt"
    runs = [subprocess.Popen([sys.executable, "-c", COMPETITOR, str(tmp_path / "stages"), str(counter)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in runs)
    assert counter.read_text() == "computed\n"
    assert outputs == ["hit 0.5 weights", "miss 0.5 weights"]
    assert not (tmp_path / "stages" / "k.lock").exists()


def test_a_dead_holders_lock_is_broken(tmp_path):
    root = tmp_path / "stages"
    root.mkdir()
    lock = root / "k.lock"
    lock.write_text("{}")  # a holder that died: nobody touches the lock any more
    os.utime(lock, (time.time() - 120, time.time() - 120))
    stage = cached_stage(root, "k", lambda weights: _made(weights, 0.25), stale_after_s=60, poll_s=0.05)
    assert not stage.hit and stage.sparsity == 0.25 and stage.weights.read_bytes() == b"w"
    assert stage.architecture == ARCHITECTURE and cached_stage(root, "k", _never).architecture == ARCHITECTURE


def _made(weights: Path, sparsity: float) -> dict:
    weights.write_bytes(b"w")
    return {"sparsity": sparsity, "architecture": ARCHITECTURE}


def _never(weights: Path) -> dict:
    raise AssertionError("a cached stage is not computed again")


def test_a_live_holders_lock_is_waited_for(tmp_path):
    root = tmp_path / "stages"
    root.mkdir()
    (root / "k.lock").write_text("{}")  # fresh: its holder is computing
    with pytest.raises(TimeoutError):
        _with_deadline(lambda: cached_stage(root, "k", _never, stale_after_s=60, poll_s=0.05), seconds=1.0)


def _with_deadline(call, *, seconds: float):
    import signal

    def expire(*_):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_failed_computation_releases_the_lock_and_caches_nothing(tmp_path):
    root = tmp_path / "stages"

    def broken(weights):
        raise RuntimeError("fine-tune diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        cached_stage(root, "k", broken)
    assert not (root / "k.lock").exists() and not (root / "k" / CARD).exists()
    assert not cached_stage(root, "k", lambda w: _made(w, 0.0)).hit


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> TrialContext:
    # Dense files: the size test below reads float16 as half of float32, which the sparse encoding
    # of pruned float kernels (on by default, 0.71x / 0.90x) would blur; it acts after the stage anyway.
    return smoke_trial_context(tmp_path_factory.mktemp("stage"), "search.pruning.sparse_encoding=false")


def test_trials_differing_only_in_quantization_share_one_fine_tune(context, tmp_path):
    pruned = TrialParams(resolution=64, pruning_schedule="polynomial_decay", target_sparsity=0.5,
                         pruning_structure="unstructured", quantization="float32")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = run_trial(pruned, context, out_dir=tmp_path / "first")
    second = run_trial(replace(pruned, quantization="float16"), context, out_dir=tmp_path / "second")

    assert (first.stage_cache, second.stage_cache) == ("miss", "hit")
    assert len(list(Path(context.stages_dir).glob(f"*/{WEIGHTS}"))) == 1
    card = json.loads(next(Path(context.stages_dir).glob(f"*/{CARD}")).read_text())
    assert card["architecture"]["family"] == context.space.model.name  # the network is stored with its weights
    assert second.sparsity == first.sparsity > 0.45
    assert second.seconds["fine_tune"] < first.seconds["fine_tune"] / 3
    # The cached weights are the fine-tuned ones, not the base: float16 halves the same float32 model.
    assert 0.45 < second.metrics["size_bytes"] / first.metrics["size_bytes"] < 0.55


def test_the_stage_key_holds_what_the_stage_depends_on_and_nothing_after(context):
    pruned = TrialParams(resolution=64, pruning_schedule="polynomial_decay", target_sparsity=0.5,
                         pruning_structure="unstructured", quantization="float32")
    spec = pruning_spec(pruned)

    def key(params=pruned, context=context, spec=spec, architecture=ARCHITECTURE):
        return stage_key(params, context, pruning=spec, architecture=architecture)

    assert key() == key(replace(pruned, quantization="int8", calibration_size=8))
    assert key() != key(replace(pruned, resolution=96))
    assert key() != key(spec=replace(spec, target_sparsity=0.3))
    assert key() != key(architecture={**ARCHITECTURE, "widths": [16]})
    other_fine_tune = replace(context.space, fine_tune=replace(context.space.fine_tune, steps=11))
    assert key() != key(context=replace(context, space=other_fine_tune))
    other_seed = replace(context.space, budget=replace(context.space.budget, seed=1))
    assert key() != key(context=replace(context, space=other_seed))
    distilled = replace(context.space, fine_tune=replace(context.space.fine_tune, distill_weight=1.0))
    more_distilled = replace(context.space, fine_tune=replace(context.space.fine_tune, distill_weight=2.0))
    assert context.space.fine_tune.distill_weight == 0.0
    assert len({key(), key(context=replace(context, space=distilled)), key(context=replace(context, space=more_distilled))}) == 3
