"""Does distilling from the unpruned base model pay in the fine-tune after pruning?

    .venv/bin/python benchmarks/distillation.py [--real ../shared/real] [--resolution 416] [--steps 150]
        [--batch-size 4] [--learning-rate 1e-4] [--distill-weights 1,4] [--threads 2] [--val-limit N]
        [--cases filters25,filters50,unstructured50] [--jsonl FILE]

The official YOLOv4-tiny weights, pruned by the trial's own code (``search.prune.prune_and_fine_tune``,
schedule ``polynomial_decay``) to each case (``none``: unpruned, what the fine-tune alone does),
fine-tuned on coco128 train2017 (128 images) for ``--steps`` steps at equal settings: plain (the
YOLO loss only, ``fine_tune.distill_weight: 0``) and distilled at each of ``--distill-weights``
(plus that weight times ``search.train.distillation_loss`` to the unpruned base model's heads).
Each result is converted to **float32 TFLite** and scored on coco128 val2017 by the search's
evaluator (pycocotools, score threshold 0.001, NMS 0.45, 100 per image), so the figures are the
ones a trial would record. The same seed gives every run the same batches and augmentation; only
the loss differs. Prints a line per run as it ends (and appends it to ``--jsonl``), then a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a clone

from search.compat import set_threads  # noqa: E402
from search.data.dataset import Split  # noqa: E402
from search.data.preprocess import split_arrays  # noqa: E402
from search.data.yolo_format import load_yolo_dataset  # noqa: E402
from search.models import get_family  # noqa: E402
from search.objectives.accuracy import measure_accuracy  # noqa: E402
from search.prune import prune_and_fine_tune  # noqa: E402
from search.pruning import PruningSpec  # noqa: E402
from search.quantize import convert  # noqa: E402
from search.space import MeasureSpec  # noqa: E402
from search.tflite_model import TFLiteDetector  # noqa: E402

FAMILY = get_family("yolov4_tiny")
SCHEDULE = "polynomial_decay"  # the gentler schedule, the one the coco128 space searches
CASES = {  # name -> what is pruned; "none" fine-tunes unpruned: what the fine-tune alone does to the weights
    "filters25": PruningSpec(schedule=SCHEDULE, target_sparsity=0.25, structure="filters"),
    "filters50": PruningSpec(schedule=SCHEDULE, target_sparsity=0.50, structure="filters"),
    "unstructured50": PruningSpec(schedule=SCHEDULE, target_sparsity=0.50, structure="unstructured"),
    "none": PruningSpec(),
}
DEFAULT_CASES = ("filters25", "filters50", "unstructured50")  # the three


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real, help="folder with darknet/ and coco128/")
    parser.add_argument("--resolution", type=int, default=416)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--distill-weights", default="1,4", help="comma-separated weights to compare with plain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-limit", type=int, default=None, help="score on the first N val images only")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated of {', '.join(CASES)}")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each run's result here")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    dataset = load_yolo_dataset(args.real / "coco128" / "data.yaml")
    val = dataset.val if args.val_limit is None else Split(dataset.val.name, dataset.val.examples[: args.val_limit])
    train = split_arrays(dataset.train, resolution=args.resolution, mode="stretch")
    cfg, weights = args.real / "darknet" / "yolov4-tiny.cfg", args.real / "darknet" / "yolov4-tiny.weights"
    base, num_classes = FAMILY.load_pretrained(cfg, weights, resolution=args.resolution)
    heads, m = FAMILY.heads(num_classes), MeasureSpec()
    print(f"{args.resolution} px, {args.steps} steps, batch {args.batch_size}, lr {args.learning_rate}, "
          f"distill_weights 0,{args.distill_weights}, seed {args.seed}; train {len(train.images)} images, "
          f"val {len(val.examples)}; scored on float32 TFLite", flush=True)

    rows = []
    for case in args.cases.split(","):
        spec = CASES[case]
        for weight in (0.0, *(float(w) for w in args.distill_weights.split(","))):
            start = time.perf_counter()
            tuned, achieved = prune_and_fine_tune(
                base, spec, steps=args.steps, dense_layers=FAMILY.dense_layers(base), heads=heads,
                images=train.images, boxes=train.boxes, classes=train.classes, learning_rate=args.learning_rate,
                batch_size=args.batch_size, seed=args.seed, family=FAMILY, distill_weight=weight,
            )
            train_s = time.perf_counter() - start
            converted = convert(tuned, mode="float32")
            result = measure_accuracy(TFLiteDetector(converted.content, num_threads=args.threads), val, heads=heads,
                                      resolution=args.resolution, preprocessing="stretch",
                                      score_threshold=m.score_threshold, iou_threshold=m.iou_threshold,
                                      max_detections=m.max_detections)
            row = {"case": case, "structure": spec.structure if spec.prunes else "none", "target": spec.sparsity,
                   "achieved": round(achieved, 3),
                   "distill_weight": weight, "map50": round(result["map50"], 4), "map": round(result["map"], 4),
                   "train_s": round(train_s), "s_per_step": round(train_s / args.steps, 2),
                   "resolution": args.resolution, "steps": args.steps, "batch_size": args.batch_size,
                   "learning_rate": args.learning_rate, "seed": args.seed}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")

    print("\n| pruning | achieved | fine-tune | AP50 | AP | s/step |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        how = "plain" if row["distill_weight"] == 0 else f"distilled ({row['distill_weight']:g})"
        pruning = f"{row['structure']} {row['target']:.0%}" if row["structure"] != "none" else "none"
        print(f"| {pruning} | {row['achieved']:.3f} | {how} | {row['map50']:.3f} "
              f"| {row['map']:.3f} | {row['s_per_step']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
