"""One trial: the whole pipeline for one set of compression settings, knowing nothing of Ray.

``run_trial(params, context, out_dir=..., guard=...)`` builds the network at the trial's
resolution, prunes and fine-tunes it from the base weights, converts it to TFLite, and measures
the converted model, each step a verb of ``search.stages``. It writes ``model.tflite`` into
``out_dir`` and returns a ``TrialResult``. ``search.tuner`` is the Ray adapter around it: it
gives the trial its folder, uploads what it wrote, and passes the node lock in as ``guard``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search.baseline import BASELINE_MODE
from search.data.dataset import Dataset
from search.models import family_of
from search.objectives import Artifact, MeasureContext
from search.params import TrialParams
from search.quantize import QUANT_MODES
from search.record import COMPLETED, TrialRecord
from search.space import Space
from search.stages.build import build
from search.stages.convert import convert
from search.stages.fine_tune import fine_tune
from search.stages.measure import measure
from search.stages.quantize_aware import quantize_aware
from search.timing.rungs import LatencyReferences

__all__ = ["TrialContext", "TrialParams", "TrialResult", "run_baseline", "run_trial", "unguarded"]

MODEL_FILE = "model.tflite"


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares: the parsed space, the dataset, the base weights and the stage cache."""

    space: Space
    dataset: Dataset
    base_weights: str  # Keras weights of the base model (resolution-independent): a path or an object-store URI
    stages_dir: str  # the shared prune + fine-tune cache: a folder or a URI (search.stage_cache)
    base_weights_sha256: str | None = None  # hashed once by the driver; None: each trial hashes the file
    baseline: dict[str, Any] | None = None  # the baseline's metrics (search.baseline), once measured
    latency_reference: LatencyReferences | None = None  # the rungs, built once by the driver: every node times the same files

    def measure_context(self) -> MeasureContext:
        return MeasureContext(dataset=self.dataset, measure=self.space.measure, preprocessing=self.space.data.preprocessing,
                              heads=family_of(self.space.model).heads(self.dataset.num_classes),
                              num_threads=self.space.budget.cpus_per_trial, reference=self.latency_reference)


@dataclass(frozen=True)
class TrialResult:
    """What one trial made and measured."""

    params: TrialParams
    metrics: dict[str, Any]  # every value and detail of the measurements the space needs
    sparsity: float
    audit: str
    float_layers: tuple[str, ...]
    calibration_s: float
    stage_cache: str  # "hit" or "miss" ("" for the baseline: no fine-tune)
    stage_wait_s: float
    stage_key: str
    lock_wait_s: float  # waited for the node before timing; not a stage
    seconds: dict[str, float] = field(default_factory=dict)
    model_file: Path | None = None

    def record(self, trial_id: str, *, node: str = "", host: str = "", model_path: str = "") -> TrialRecord:
        return TrialRecord(
            trial_id, COMPLETED, params=self.params.as_dict(), metrics=self.metrics, sparsity=round(float(self.sparsity), 4),
            audit=self.audit, float_layers=self.float_layers, calibration_s=self.calibration_s,
            stage_cache=self.stage_cache, stage_wait_s=self.stage_wait_s, stage_key=self.stage_key,
            lock_wait_s=self.lock_wait_s, seconds=self.seconds, node=node, host=host, model_path=model_path,
        )


class StageTimer:
    """Seconds spent in each named step, reported as ``seconds[<step>]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = round(time.perf_counter() - start, 3)


@contextmanager
def unguarded(*, alone: bool = False):
    """The guard of a trial run outside a cluster: nothing to wait for (yields the seconds waited)."""
    yield 0.0


def run_trial(params: TrialParams, context: TrialContext, *, out_dir: Path, guard=unguarded) -> TrialResult:
    """The pipeline. ``guard(alone=...)`` wraps every step: the Ray adapter holds the node lock
    shared for computing steps and exclusive for timing ones, so no trial computes on the node
    while another measures latency."""
    from search.compat import set_threads

    space, data = context.space, context.dataset
    family = family_of(space.model)
    set_threads(space.budget.cpus_per_trial)
    timer = StageTimer()

    # 1. Build the network at the trial's resolution.
    with guard(), timer("build"):
        model = build(family, num_classes=data.num_classes, resolution=params.resolution)
    # 2. Prune (or not) while fine-tuning on the training split; cached by content.
    with guard(), timer("fine_tune"):
        tuned = fine_tune(model, params, context, family=family)
    model, sparsity = tuned.model, tuned.sparsity
    # 2b. Quantization-aware modes fine-tune again with fake quantization (keeping the zeros).
    if QUANT_MODES[params.quantization].needs_qat:
        with guard(), timer("qat"):
            model, zeros = quantize_aware(model, params, context, family=family, preserve_sparsity=tuned.prunes)
        # a thinner network's sparsity is the filters it lost, which QAT cannot bring back
        sparsity = sparsity if tuned.removed_filters else zeros
    # 3, 4. Convert, and measure the converted model.
    made = _convert_and_measure(model, params, context, out_dir=out_dir, guard=guard, timer=timer,
                                zeroed_weights=tuned.prunes)
    return replace(made, sparsity=sparsity, stage_cache=tuned.cache, stage_wait_s=tuned.wait_s, stage_key=tuned.key)


def run_baseline(context: TrialContext, *, resolution: int, out_dir: Path, guard=unguarded) -> TrialResult:
    """The uncompressed base model at ``resolution``, converted to float32 and measured exactly as
    a trial is (``search.baseline``): what every trial's drop and ratios are against."""
    from search.compat import set_threads
    from search.storage import local_copy

    family = family_of(context.space.model)
    set_threads(context.space.budget.cpus_per_trial)
    params = TrialParams(resolution=resolution, pruning_schedule="none", quantization=BASELINE_MODE)
    timer = StageTimer()
    with guard(), timer("build"):
        model = build(family, num_classes=context.dataset.num_classes, resolution=resolution)
        model.load_weights(str(local_copy(context.base_weights)))
    return _convert_and_measure(model, params, context, out_dir=out_dir, guard=guard, timer=timer)


def _convert_and_measure(model, params: TrialParams, context: TrialContext, *, out_dir: Path, guard, timer,
                         zeroed_weights: bool = False) -> TrialResult:
    # 3. Convert to TFLite in the trial's mode (audited; pruned weights also sparse-encoded, the smaller kept).
    with guard(), timer("convert"):
        converted = convert(model, params, context, zeroed_weights=zeroed_weights)
        model_file = Path(out_dir) / MODEL_FILE
        model_file.write_bytes(converted.content)
    # 4. Measure the converted model by every measurement the space needs.
    artifact = Artifact(content=converted.content, model=model, resolution=params.resolution, mode=params.quantization)
    metrics, lock_wait = measure(artifact, context.measure_context(), context.space.trial_measured_names, guard=guard,
                                 timer=timer)
    return TrialResult(
        params, metrics, 0.0, converted.summary(), tuple(converted.float_layers),
        round(converted.calibration_seconds or 0.0, 3), "", 0.0, "", lock_wait, timer.seconds, model_file,
    )
