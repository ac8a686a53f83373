"""What each pruning buys on the official YOLOv4-tiny (80 classes): params, MACs, bytes, latency, accuracy.

    .venv/bin/python benchmarks/pruning.py [--real ../shared/real] [--steps 60] [--accuracy-resolution 320]
        [--learning-rate 1e-4] [--schedule polynomial_decay] [--calibration 32] [--val-limit N] [--min-seconds 6]
        [--modes int8,float32] [--rows dense,filters]

One row per pruning and mode: dense, 50% unstructured (dense and sparse encoding), 2:4, 25%
and 50% filters. Each pruning is the trial's own ``search.prune.prune_and_fine_tune`` from the
official weights on coco128 train, ``--steps`` fine-tune steps at ``--accuracy-resolution``
(``--schedule``; dense: the same steps unpruned, so every row has had the same training). The
defaults are what fits this shared 2-core machine: a step at 416 px takes 1.6-2.9 s (batch 4),
at 320 about 0.6 of that, and 20 steps at lr 2e-5 (the coco space's) recover nothing from
pruning (benchmarks/README.md); its weights then go into the same network at 416 px, where
params, MACs (``search.objectives``), bytes, gzip bytes and latency are measured. Conversion is
``search.quantize.convert`` (int8 calibrated on ``--calibration`` coco128 train images); AP50 /
AP are pycocotools on coco128 val in LiteRT at the accuracy resolution. Latency: the project's
interleaved timing (``search.timing``: invokes alternating with the latency reference, one
thread, at least ``--min-seconds``), as ``latency_ms`` = ratio x the reference's latency here.

The last line checks issue 14's goals for 50% filters in int8 against dense int8.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a clone

from search.data.preprocess import split_arrays  # noqa: E402
from search.data.yolo_format import load_yolo_dataset  # noqa: E402
from search.models import get_family  # noqa: E402
from search.objectives.accuracy import measure_accuracy  # noqa: E402
from search.objectives.macs import count_macs  # noqa: E402
from search.objectives.params import count_params  # noqa: E402
from search.objectives.size import gzip_size_bytes, size_bytes  # noqa: E402
from search.pruning import PruningSpec  # noqa: E402
from search.quantize import QUANT_MODES, convert  # noqa: E402
from search.space import MeasureSpec  # noqa: E402
from search.stages.convert import calibration_images  # noqa: E402
from search.tflite_model import TFLiteDetector  # noqa: E402

FAMILY = get_family("yolov4_tiny")
RESOLUTION = 416  # params, MACs, bytes and latency: what the weights were trained at
PREPROCESSING = "stretch"  # Darknet's and OpenCV's resize for these weights
BATCH_SIZE = 4  # spaces/yolov4_tiny_coco.yaml's: 4 images of 416 px a step fit the time
# (row label, structure, target sparsity, convert with sparse_encoding); one fine-tune per distinct pruning
PRUNINGS = (
    ("dense", None, 0.0, False),
    ("50% unstructured", "unstructured", 0.5, False),
    ("50% unstructured, sparse encoding", "unstructured", 0.5, True),
    ("2:4", "2:4", 0.0, False),
    ("25% filters", "filters", 0.25, False),
    ("50% filters", "filters", 0.5, False),
)
GOALS = {"macs": 0.5, "latency_ms": 0.6, "bytes": 0.6}  # issue 14: 50% filters int8 against dense int8


def fine_tuned(spec: PruningSpec, *, base, train, steps: int, learning_rate: float):
    """(model, sparsity, seconds): ``spec`` applied by the trial's code, fine-tuned ``steps`` steps."""
    from search.prune import prune_and_fine_tune

    start = time.perf_counter()
    model, sparsity = prune_and_fine_tune(
        base, spec, steps=steps, dense_layers=FAMILY.dense_layers(base), heads=FAMILY.heads(80), images=train.images,
        boxes=train.boxes, classes=train.classes, learning_rate=learning_rate, batch_size=BATCH_SIZE, seed=0,
        family=FAMILY,
    )
    return model, sparsity, time.perf_counter() - start


def at_resolution(model, resolution: int):
    """The same network and weights with a ``resolution`` input (weights do not depend on it)."""
    from search.prune import copy_weights

    if model.input_shape[1] == resolution:
        return model
    rebuilt = FAMILY.from_architecture(FAMILY.architecture(model), resolution=resolution)
    copy_weights(model, rebuilt)
    return rebuilt


def converted(model, mode: str, *, train_split, calibration: int, sparse: bool):
    images = None
    if QUANT_MODES[mode].needs_calibration:
        images = calibration_images(train_split, size=calibration, seed=0, resolution=model.input_shape[1],
                                    preprocessing=PREPROCESSING)
    return convert(model, mode=mode, calibration_images=images, sparse_encoding=sparse)


def latency_ms(content: bytes, reference: bytes, node_ms: float, *, min_seconds: float) -> tuple[float, float]:
    """(latency_ms as a trial reports it: the ratio to the reference x its latency here, the raw median)."""
    from search.timing.interleaved import measure_interleaved

    stats = measure_interleaved(content, reference, num_threads=1, min_seconds=min_seconds,
                                max_seconds=max(min_seconds, 10.0))
    return stats.ratio * node_ms, stats.median_ms


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real, help="folder with darknet/ and coco128/")
    parser.add_argument("--steps", type=int, default=60, help="fine-tune steps per pruning (>= 10)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--schedule", default="polynomial_decay", help="the pruned rows' schedule (search.pruning)")
    parser.add_argument("--accuracy-resolution", type=int, default=320,
                        help="resolution of the fine-tune and the AP columns (the rest is at 416)")
    parser.add_argument("--calibration", type=int, default=32, help="coco128 train images int8 calibrates on")
    parser.add_argument("--val-limit", type=int, default=None, help="score on the first N val images only")
    parser.add_argument("--min-seconds", type=float, default=6.0, help="timed seconds per latency measurement")
    parser.add_argument("--modes", default="int8,float32")
    parser.add_argument("--rows", default="", help="only the rows whose label contains one of these comma-separated "
                        "words (e.g. dense,filters); dense and 50%% filters are needed for the goals line")
    args = parser.parse_args(argv)
    from search.compat import set_threads
    from search.data.dataset import Split
    from search.timing.reference import ANCHOR, ANCHOR_MODE, node_reference_latency, reference_model

    set_threads(2)
    modes = args.modes.split(",")
    dataset = load_yolo_dataset(args.real / "coco128" / "data.yaml")
    val = dataset.val if args.val_limit is None else Split(dataset.val.name, dataset.val.examples[: args.val_limit])
    darknet = args.real / "darknet"
    acc_res = args.accuracy_resolution
    base, _ = FAMILY.load_pretrained(darknet / "yolov4-tiny.cfg", darknet / "yolov4-tiny.weights", resolution=acc_res)
    base_weights = base.get_weights()
    train = split_arrays(dataset.train, resolution=acc_res, mode=PREPROCESSING)
    measure = MeasureSpec()
    heads = FAMILY.heads(80)
    reference = reference_model(ANCHOR, ANCHOR_MODE)  # the anchor alone, absolute: as before the rungs
    print(f"# benchmarks/pruning.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: official "
          f"yolov4-tiny, 80 classes; fine-tune {args.steps} steps (batch {BATCH_SIZE}, lr {args.learning_rate:g}, "
          f"schedule {args.schedule}) and AP at {acc_res} px on coco128 val ({len(val.examples)} images), params / MACs / "
          f"bytes / latency at {RESOLUTION} px; int8 calibrated on {args.calibration} train images; latency: 1 thread, "
          f"interleaved with the latency reference, >= {args.min_seconds:g} s", flush=True)

    rows, tuned_by_spec = [], {}
    wanted = [word for word in args.rows.split(",") if word]
    for label, structure, target, sparse in PRUNINGS:
        if wanted and not any(word in label for word in wanted):
            continue
        spec = PruningSpec() if structure is None else PruningSpec(args.schedule, target, structure)
        if spec not in tuned_by_spec:
            base.set_weights(base_weights)  # every pruning starts from the official weights
            tuned_by_spec[spec] = fine_tuned(spec, base=base, train=train, steps=args.steps,
                                             learning_rate=args.learning_rate)
            _, sparsity, seconds = tuned_by_spec[spec]
            print(f"# {label}: fine-tune {seconds:.0f} s ({seconds / args.steps:.2f} s a step), sparsity {sparsity:.3f}",
                  flush=True)
        tuned, sparsity, _ = tuned_by_spec[spec]
        full = at_resolution(tuned, RESOLUTION)
        for mode in modes:
            small = converted(tuned, mode, train_split=dataset.train, calibration=args.calibration, sparse=sparse)
            scored = measure_accuracy(TFLiteDetector(small.content, num_threads=2), val, heads=heads,
                                      resolution=acc_res, preprocessing=PREPROCESSING,
                                      score_threshold=measure.score_threshold, iou_threshold=measure.iou_threshold,
                                      max_detections=measure.max_detections)
            made = small if full is tuned else converted(full, mode, train_split=dataset.train,
                                                          calibration=args.calibration, sparse=sparse)
            row = {"pruning": label, "mode": mode, "params": count_params(full), "macs": count_macs(full),
                   "bytes": size_bytes(made.content), "gzip": gzip_size_bytes(made.content),
                   "content": made.content, "encoding": made.encoding, **scored}
            rows.append(row)
            print(f"# {label} {mode}: {made.encoding} encoding, {row['bytes']} B, AP50 {row['map50']:.3f}", flush=True)

    # Every latency in one phase at the end, after all the fine-tunes: no training beside the timing.
    print(f"# timing {len(rows)} models, {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} UTC", flush=True)
    with tempfile.TemporaryDirectory() as fresh:  # the reference's latency now, not a node's cached one
        node = node_reference_latency(reference, num_threads=1, seconds=measure.latency_reference_seconds,
                                      cache_dir=Path(fresh))
    print(f"# latency reference: {node.median_ms:.2f} ms", flush=True)
    for row in rows:
        row["latency_ms"], row["latency_raw_ms"] = latency_ms(row["content"], reference, node.median_ms,
                                                              min_seconds=args.min_seconds)
        print(f"# {row['pruning']} {row['mode']}: {row['latency_ms']:.1f} ms (raw median {row['latency_raw_ms']:.1f} ms)",
              flush=True)

    print(f"\n| pruning | mode | params | MACs | bytes | gzip | latency {RESOLUTION} | AP50 / AP ({acc_res} px, "
          f"{args.steps} steps) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['pruning']} | {row['mode']} | {row['params'] / 1e6:.2f} M | {row['macs'] / 1e9:.2f} G | "
              f"{row['bytes'] / 1e6:.2f} MB | {row['gzip'] / 1e6:.2f} MB | {row['latency_ms']:.1f} ms | "
              f"{row['map50']:.3f} / {row['map']:.3f} |")
    print()
    print(goals_line(rows))
    return 0


def goals_line(rows: list[dict]) -> str:
    """Issue 14's goals: 50% filters in int8 against dense int8 (or the first mode measured)."""
    mode = "int8" if any(r["mode"] == "int8" for r in rows) else rows[0]["mode"]
    dense = next((r for r in rows if r["pruning"] == "dense" and r["mode"] == mode), None)
    half = next((r for r in rows if r["pruning"] == "50% filters" and r["mode"] == mode), None)
    if dense is None or half is None:
        return "goals: not checked (they need the dense and the 50% filters rows)"
    ratio = {key: half[key] / dense[key] for key in GOALS}
    return (f"50% filters {mode}: MACs {ratio['macs']:.2f}x dense (goal <= {GOALS['macs']}), "
            f"latency {ratio['latency_ms']:.2f}x (goal <= {GOALS['latency_ms']}), "
            f"bytes {ratio['bytes']:.2f}x (goal <= {GOALS['bytes']})")


if __name__ == "__main__":
    raise SystemExit(main())
