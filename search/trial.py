"""One trial: the whole pipeline for one set of compression settings, knowing nothing of Ray.

``run_trial(params, context)`` builds the detector at the trial's resolution from the base
weights, prunes and fine-tunes it, converts it to TFLite, and measures the converted model. It
returns a flat dict of metrics (objectives, achieved sparsity, audit, stage timings) and leaves
the ``.tflite`` file in the trial's artifact folder. ``search.tuner`` wraps it for Ray Tune.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.data.dataset import Dataset, Split
from search.node_lock import exclusive, shared
from search.space import Space


@dataclass(frozen=True)
class TrialParams:
    """A trial's settings, read from the flat config Ray/Optuna proposed."""

    resolution: int
    pruning_schedule: str
    quantization: str
    target_sparsity: float | None = None  # only when pruning
    pruning_structure: str | None = None  # only when pruning
    calibration_size: int | None = None  # only for modes that calibrate
    float_layers: int | None = None  # only for selective quantization: most sensitive ops kept float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialParams:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in config.items() if k in names})

    def describe(self) -> str:
        prune = "no pruning" if self.pruning_schedule == "none" else f"{self.pruning_schedule} {self.target_sparsity:.2f} {self.pruning_structure}"
        calibration = f" cal={self.calibration_size}" if self.calibration_size else ""
        floats = f" float={self.float_layers}" if self.float_layers else ""
        return f"{self.resolution}px, {prune}, {self.quantization}{calibration}{floats}"


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares: the parsed space, the dataset, and the base model's weights."""

    space: Space
    dataset: Dataset
    base_weights: str  # Keras weights of the base model (resolution-independent): a path or an object-store URI
    artifacts_dir: str  # every trial writes into <artifacts_dir>/<trial_id>/ (a folder or a URI: search.storage)
    stages_dir: str | None = None  # the shared prune + fine-tune cache; None: <space.shared_dir>/stages
    base_weights_sha256: str | None = None  # hashed once by the driver; None: each trial hashes the file


class StageTimer:
    """Seconds spent in each named stage, reported as ``time_<stage>_s``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time_{stage}_s"] = round(time.perf_counter() - start, 3)


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


def trial_stage_key(params: TrialParams, context: TrialContext, pruning) -> str:
    """The prune + fine-tune stage's cache key: everything the stage depends on, nothing after it."""
    from dataclasses import asdict

    from search.inputs import dataset_fingerprint
    from search.stage_cache import file_sha256, stage_key
    from search.storage import local_copy

    space = context.space
    return stage_key(
        base_weights_sha256=context.base_weights_sha256 or file_sha256(local_copy(context.base_weights)),
        dataset_fingerprint=dataset_fingerprint(context.dataset),
        preprocessing=space.data.preprocessing, resolution=params.resolution, pruning=asdict(pruning),
        fine_tune={"steps": space.fine_tune.steps, "batch_size": space.fine_tune.batch_size,
                   "learning_rate": space.fine_tune.learning_rate},
        seed=space.budget.seed,
    )


def run_trial(params: TrialParams, context: TrialContext, *, trial_id: str) -> dict[str, Any]:
    # Every step that computes holds the node lock shared (search.node_lock), the imports too
    # (TensorFlow takes seconds of CPU): other trials compute alongside, but none while a latency
    # is measured (step 5), and between steps a trial waits while someone else measures.
    with shared():
        from objectives.accuracy import measure_accuracy
        from objectives.latency import measure_latency
        from objectives.macs import count_macs
        from objectives.size import gzip_size_bytes, size_bytes
        from search.compat import keras, set_threads
        from search.data.preprocess import split_arrays
        from search.model.yolov4_tiny import build_yolov4_tiny
        from search.prune import SCHEDULES, PruningSpec, prune_and_fine_tune
        from search.quantize import QUANT_MODES, convert
        from search import storage
        from search.stage_cache import cached_stage
        from search.tflite_model import TFLiteDetector

    space, data = context.space, context.dataset
    set_threads(space.budget.cpus_per_trial)
    # The trial's folder in the storage; on an object store the files are made here on the node
    # and uploaded at the end (step 6).
    trial_location = storage.join(context.artifacts_dir, trial_id)
    out_dir = storage.SCRATCH / "trials" / trial_id if storage.is_uri(trial_location) else Path(trial_location)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    preprocessing = space.data.preprocessing

    # 1. Build the detector at the trial's resolution (its weights come in step 2), in a cleared
    #    session: a reused Ray worker (search.tuner) holds nothing of its previous trial.
    with timer("build"), shared():
        keras.backend.clear_session()
        model = build_yolov4_tiny(num_classes=data.num_classes, resolution=params.resolution)
        macs = count_macs(model)  # deterministic cost: the same on every machine

    # 2. Prune (or not) while fine-tuning on the training split, then strip the wrappers.
    pruning = PruningSpec(
        schedule=params.pruning_schedule,
        target_sparsity=params.target_sparsity or 0.0,
        structure=params.pruning_structure or "unstructured",
    )
    #    The result is cached by content (search.stage_cache): trials that differ only in how they
    #    are converted share it, on any node, and it is computed once even when they run together.
    #    Only a miss needs the base weights and the preprocessed training split.
    def fine_tune(weights_path: Path) -> float:
        train = split_arrays(data.train, resolution=params.resolution, mode=preprocessing)
        model.load_weights(str(storage.local_copy(context.base_weights)))
        tuned, sparsity = prune_and_fine_tune(
            model, pruning,
            steps=space.fine_tune.steps, batch_size=space.fine_tune.batch_size,
            learning_rate=space.fine_tune.learning_rate, seed=space.budget.seed,
            images=train.images, boxes=train.boxes, classes=train.classes, num_classes=data.num_classes,
        )
        tuned.save_weights(str(weights_path))
        return sparsity

    with timer("fine_tune"), shared():
        stage_key = trial_stage_key(params, context, pruning)
        stage = cached_stage(context.stages_dir or Path(space.shared_dir) / "stages", stage_key, fine_tune)
        model.load_weights(str(stage.weights))  # the stripped weights fit the model built in step 1
        sparsity = stage.sparsity

    # 2b. Quantization-aware modes fine-tune again with fake quantization (keeping the sparsity).
    mode = QUANT_MODES[params.quantization]
    if mode.needs_qat:
        with timer("qat"), shared():
            from search.qat import qat_sparsity, quantize_aware_fine_tune  # imports TFMOT's QAT (seconds)

            train = split_arrays(data.train, resolution=params.resolution, mode=preprocessing)
            model = quantize_aware_fine_tune(
                model, preserve_sparsity=SCHEDULES[pruning.schedule].prunes,
                steps=space.fine_tune.steps, batch_size=space.fine_tune.batch_size, seed=space.budget.seed,
                images=train.images, boxes=train.boxes, classes=train.classes, num_classes=data.num_classes,
            )
            sparsity = qat_sparsity(model)

    # 3. Convert to TFLite in the trial's mode, calibrating on training images when it needs to.
    #    (The per-layer quantization error report is made for the exported trial only: search.export.)
    with timer("convert"), shared():
        calibration = None
        if params.calibration_size:
            calibration = calibration_images(data.train, size=params.calibration_size, seed=space.budget.seed,
                                             resolution=params.resolution, preprocessing=preprocessing)
        converted = convert(model, mode=params.quantization, calibration_images=calibration,
                            float_layers=params.float_layers or 0)
        model_path = out_dir / "model.tflite"
        model_path.write_bytes(converted.content)

    # 4. Measure the converted model: accuracy on the val split, and size.
    with timer("evaluate"), shared():
        detector = TFLiteDetector(converted.content, num_threads=space.budget.cpus_per_trial)
        accuracy = measure_accuracy(
            detector, data.val, num_classes=data.num_classes, resolution=params.resolution,
            preprocessing=preprocessing, score_threshold=space.measure.score_threshold,
            iou_threshold=space.measure.iou_threshold, max_detections=space.measure.max_detections,
        )
        sizes = {"size_bytes": size_bytes(converted.content), "size_gzip_bytes": gzip_size_bytes(converted.content)}

    # 5. Latency, alone on the node: no other trial computes meanwhile.
    m = space.measure
    asked = time.perf_counter()
    with exclusive(), timer("latency"):  # the wait for the node is latency_lock_wait_s, not a stage
        lock_wait = time.perf_counter() - asked
        latency = measure_latency(
            converted.content, num_threads=m.latency_threads, warmup=m.latency_warmup,
            min_runs=m.latency_min_runs, min_seconds=m.latency_min_seconds, max_seconds=m.latency_max_seconds,
        )

    metrics = {
        **accuracy,
        **sizes,
        "latency_ms": latency.median_ms,
        "latency_p90_ms": latency.p90_ms,
        "latency_spread": latency.spread,
        "latency_median_all_ms": latency.median_all_ms,
        "latency_runs": latency.runs,
        "latency_threads": latency.num_threads,
        "latency_cpus": latency.cpus,
        "latency_lock_wait_s": round(lock_wait, 3),
        "cpu_model": latency.cpu_model,
        "macs": macs,
        "sparsity": round(float(sparsity), 4),
        "audit": converted.audit.summary(),
        "float_layers": ";".join(converted.float_layers),
        "calibration_s": round(getattr(converted, "calibration_seconds", 0.0) or 0.0, 3),
        "stage_cache": "hit" if stage.hit else "miss",
        "stage_wait_s": stage.wait_s,
        "stage_key": stage_key,
        "model_path": storage.join(trial_location, model_path.name),
        **timer.seconds,
    }
    (out_dir / "metrics.json").write_text(json.dumps({"params": params.__dict__, "metrics": metrics}, indent=2, default=str))

    # 6. On an object store, the trial's files go up; the node keeps nothing of them.
    if storage.is_uri(trial_location):
        for name in ("model.tflite", "metrics.json"):
            storage.upload(out_dir / name, storage.join(trial_location, name))
        shutil.rmtree(out_dir, ignore_errors=True)
    return metrics
