"""Size and latency of YOLOv4-tiny at 416 px, 80 classes, in every quantization mode, dense and 50% pruned.

    .venv/bin/python benchmarks/modes_416.py [--threads 1] [--calibration-size 8] [--csv FILE]

The model is the official COCO YOLOv4-tiny from ``../shared/real/darknet`` when present, else
randomly initialised (size and latency do not depend on the weights' values, only gzip does a
little). The pruned variant is the same model pruned to 50% by the trial's own code
(``search.prune.prune_and_fine_tune``, schedule ``constant``, unstructured, a short fine-tune on
the training images) and stripped, so its kernels really are half zeros. Calibrating modes use
``--calibration-size`` coco128 train images (generated shapes when coco128 is absent).
``int8_selective`` keeps its ``SELECTIVE_FLOAT_LAYERS`` most int8-sensitive ops in float;
``qat_int8`` converts the model with TFMOT fake quantization applied (ranges set on the same
images) but without the QAT fine-tune, which changes weight values, not what the file holds or
the interpreter runs. A mode that fails becomes a table row with its error.

Each converted model is timed as a trial times it: ``measure_latency`` holding the node lock
exclusively. int16x8 has no XNNPACK kernels and runs on TFLite's reference kernels (seconds per
invoke at 416), so its timed phase is capped. Prints one table row per (mode, pruned); the timings
are only as quiet as the machine was (the lock keeps our trials out, not other people's jobs).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a clone

import numpy as np

from search.models import get_family
from search.node_lock import exclusive, shared
from search.objectives.latency import measure_latency
from search.objectives.macs import count_macs
from search.objectives.size import gzip_size_bytes, size_bytes
from search.quantize import QUANT_MODES, convert

FAMILY = get_family("yolov4_tiny")
RESOLUTION = 416
NUM_CLASSES = 80
REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
DARKNET_CFG, DARKNET_WEIGHTS = REAL / "darknet" / "yolov4-tiny.cfg", REAL / "darknet" / "yolov4-tiny.weights"
COCO128 = REAL / "coco128" / "data.yaml"
TARGET_SPARSITY = 0.5
PRUNE_STEPS = 10  # the fewest ``prune`` accepts; the masks are what matters here, not recovered accuracy
PRUNE_BATCH = 2
PRUNE_LEARNING_RATE = 2e-4  # ``prune_and_fine_tune``'s default while it had one; only the masks matter here
# Modes without XNNPACK kernels: a few invokes give the median to well under the mode's gap to the others.
SLOW_MODES = {"int16x8": {"warmup": 1, "min_runs": 3, "max_seconds": 30.0}}
SELECTIVE_FLOAT_LAYERS = 2  # int8_selective: the two ops most sensitive to int8 stay float
FAST_TIMING = {"warmup": 5, "min_runs": 20, "max_seconds": 10.0}  # measure_latency's defaults


def base_model():
    """(model, where its weights came from): the official weights when present, else random init."""
    from search.compat import keras

    if DARKNET_CFG.is_file() and DARKNET_WEIGHTS.is_file():
        model, num_classes = FAMILY.load_pretrained(DARKNET_CFG, DARKNET_WEIGHTS, resolution=RESOLUTION)
        if num_classes != NUM_CLASSES:
            raise SystemExit(f"{DARKNET_CFG}: expected the {NUM_CLASSES}-class COCO cfg, but it has {num_classes} classes")
        return model, f"official Darknet weights ({DARKNET_WEIGHTS})"
    keras.utils.set_random_seed(0)
    return FAMILY.build(num_classes=NUM_CLASSES, resolution=RESOLUTION), "random init (no ../shared/real)"


def train_split():
    """(SplitArrays at 416, where it came from): coco128 train when present, else generated shapes."""
    from search.data.generated import generate_shapes_dataset
    from search.data.preprocess import split_arrays
    from search.data.yolo_format import load_yolo_dataset

    if COCO128.is_file():
        data_yaml, source = COCO128, f"coco128 train ({COCO128.parent})"
    else:
        root = Path(tempfile.mkdtemp(prefix="modes416-data-"))
        data_yaml, source = generate_shapes_dataset(root, num_train=16, num_val=4, image_size=RESOLUTION), "generated shapes"
    dataset = load_yolo_dataset(data_yaml)
    return split_arrays(dataset.train, resolution=RESOLUTION, mode="stretch"), source


def pruned_copy(model, train) -> tuple[object, float]:
    """A 50%-sparse copy of ``model`` pruned and fine-tuned by the trial's code; (model, measured sparsity)."""
    from search.prune import prune_and_fine_tune
    from search.pruning import PruningSpec

    spec = PruningSpec(schedule="constant", target_sparsity=TARGET_SPARSITY)
    with shared():
        tuned, sparsity = prune_and_fine_tune(
            model, spec, steps=PRUNE_STEPS, batch_size=PRUNE_BATCH, learning_rate=PRUNE_LEARNING_RATE,
            images=train.images, boxes=train.boxes, classes=train.classes,
            dense_layers=FAMILY.dense_layers(model), heads=FAMILY.heads(NUM_CLASSES),
        )
        # As a trial does: the stripped weights go into a freshly built model. ``strip_pruning``'s
        # own output is a clone that TFMOT's quantize_model cannot rebuild ("Graph disconnected").
        with tempfile.TemporaryDirectory() as tmp:
            tuned.save_weights(f"{tmp}/pruned.h5")
            fresh = FAMILY.build(num_classes=NUM_CLASSES, resolution=RESOLUTION)
            fresh.load_weights(f"{tmp}/pruned.h5")
    return fresh, sparsity


def convert_in_mode(model, *, mode: str, calibration: np.ndarray, pruned: bool):
    """``convert`` with what each row of the modes table needs besides the model."""
    spec = QUANT_MODES[mode]
    extra = {}
    if spec.needs_calibration:
        extra["calibration_images"] = calibration
    if spec.selective:
        extra["float_layers"] = SELECTIVE_FLOAT_LAYERS
    if spec.keeps_heads:
        extra["head_layers"] = FAMILY.head_layers(model)
    if spec.needs_qat:
        from search.qat import quantize_aware_model

        # Fake quantization with ranges set on the calibration images, but no QAT fine-tune: that
        # changes the weights' values, not the graph the interpreter runs or the file's layout.
        model = quantize_aware_model(model, split_layers=FAMILY.channel_split_layers(model), preserve_sparsity=pruned,
                                     range_images=calibration)
        # The weight quantizers take their ranges from the kernels on a training call only; left at
        # their initial values they round most weights to zero, and the gzip size would be fiction.
        model(calibration[:1], training=True)
    return convert(model, mode=mode, **extra)


def measure_mode(model, *, mode: str, calibration: np.ndarray, threads: int, pruned: bool) -> dict:
    """Convert ``model`` in ``mode`` (audited) and measure it as a trial does."""
    with shared():  # as a trial's stages: no one else's latency measurement runs meanwhile
        converted = convert_in_mode(model, mode=mode, calibration=calibration, pruned=pruned)
    timing = SLOW_MODES.get(mode, FAST_TIMING)
    with exclusive():
        latency = measure_latency(converted.content, num_threads=threads, **timing)
    return {
        "mode": mode,
        "size_bytes": size_bytes(converted.content),
        "gzip_bytes": gzip_size_bytes(converted.content),
        "latency_ms": round(latency.median_ms, 2),
        "latency_p90_ms": round(latency.p90_ms, 2),
        "latency_min_ms": round(latency.min_ms, 2),  # the least disturbed invoke: a floor on a busy machine
        "spread": round(latency.spread, 3),
        "runs": latency.runs,
        "convert_s": round(converted.convert_seconds, 1),
        "calibration_s": round(converted.calibration_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads (default 1)")
    parser.add_argument("--calibration-size", type=int, default=8, help="train images for int8/int16x8 (default 8)")
    parser.add_argument("--modes", default=",".join(QUANT_MODES), help="comma-separated modes (default: all)")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(QUANT_MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(QUANT_MODES)}")

    from search.prune import measured_sparsity
    from search.stages.convert import calibration_indices

    model, weights = base_model()
    train, data_source = train_split()
    # As search.stages.convert.calibration_images picks them (seeded, from train), on the decoded split.
    picked = calibration_indices(len(train.images), size=args.calibration_size, seed=0)
    calibration = train.images[picked].astype(np.float32) / 255.0
    start = time.perf_counter()
    pruned, sparsity = pruned_copy(model, train)
    print(f"model: YOLOv4-tiny {RESOLUTION}px {NUM_CLASSES} classes, {weights}")
    print(f"data: {data_source}; calibration {len(calibration)} images")
    dense = measured_sparsity(model, dense_layers=FAMILY.dense_layers(model))
    print(f"pruned copy: {sparsity:.3f} sparsity of the prunable kernels (dense: {dense:.3f}), "
          f"{PRUNE_STEPS} steps in {time.perf_counter() - start:.0f} s")

    macs = count_macs(model)
    rows = []
    for pruned_flag, variant in ((False, model), (True, pruned)):
        for mode in modes:
            row = {"mode": mode, "pruned": "50%" if pruned_flag else "no", "macs": macs}
            try:
                row.update(measure_mode(variant, mode=mode, calibration=calibration, threads=args.threads, pruned=pruned_flag))
            except Exception as error:  # one mode failing is a row of the table, not the end of the run
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            print("  ", row, flush=True)

    columns = ["mode", "pruned", "size_bytes", "gzip_bytes", "latency_ms", "latency_p90_ms", "latency_min_ms", "spread", "runs",
               "macs", "convert_s", "calibration_s"]
    print()
    print(f"threads={args.threads}; MACs are the dense count (pruning and quantization do not change what TFLite's CPU kernels compute)")
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        if "error" in row:
            print(f"{row['mode']} | {row['pruned']} | {row['error']}")
            continue
        print(" | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns))
    if args.csv:
        with args.csv.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=[*columns, "error"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
