"""int8 recipes against float32 and plain int8: the official YOLOv4-tiny weights on coco128 val.

For each resolution, every mode named converts the official weights (``../shared/real``) exactly as
a trial does (``search.quantize.convert``, calibrated on ``--calibration`` coco128 train images,
the family's head convs for the modes that keep them), then prints mAP@0.5 and mAP@[.5:.95]
(pycocotools, the spaces' thresholds), the drops against float32 in points, the file size, the
latency and what the audit says stays out of int8. Latency: ``measure_latency`` (one thread, as a
trial) taken ``--repeats`` times per model, interleaved over the models so that the machine's
drift (10-16% between windows here) falls on all of them alike; the median of the repeats is
shown, with its ratio to plain int8 from the same rounds.

    .venv/bin/python benchmarks/int8_recipes.py [--resolutions 416,320] [--modes ...] [--calibration 128]
        [--float-layers 4] [--repeats 3] [--min-seconds 2] [--val-limit N]

The last line: ``best int8 recipe: <mode>: AP50 drop X pts, AP drop Y pts`` at the first
resolution, among the int8 recipes (calibrated rows whose audit keeps at most the heads out of
int8) within 10% of plain int8's latency; the goal is at most 0.5 points on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.data.dataset import Split  # noqa: E402
from search.data.yolo_format import load_yolo_dataset  # noqa: E402
from search.models import get_family  # noqa: E402
from search.objectives.accuracy import measure_accuracy  # noqa: E402
from search.objectives.latency import measure_latency  # noqa: E402
from search.quantize import QUANT_MODES, convert  # noqa: E402
from search.space import MeasureSpec  # noqa: E402
from search.stages.convert import calibration_images  # noqa: E402
from search.tflite_model import TFLiteDetector  # noqa: E402

FAMILY = "yolov4_tiny"  # the official weights' network (search.models)
REFERENCE, PLAIN = "float32", "int8"
RECIPES = [name for name, m in QUANT_MODES.items()
           if m.needs_calibration and m.activation_dtype == "INT8" and name != PLAIN]
LATENCY_BUDGET = 1.10  # a recipe may cost at most 10% over plain int8


def _convert(model, mode: str, *, family, calibration, float_layers: int):
    spec = QUANT_MODES[mode]
    return convert(model, mode=mode, calibration_images=calibration if spec.needs_calibration else None,
                   float_layers=float_layers if spec.selective else 0,
                   head_layers=family.head_layers(model) if spec.keeps_heads else ())


def _latencies(contents: dict[str, bytes], *, repeats: int, min_seconds: float) -> dict[str, list[float]]:
    """``repeats`` medians per model, taken in interleaved rounds (every model once per round)."""
    taken: dict[str, list[float]] = {mode: [] for mode in contents}
    for _ in range(repeats):
        for mode, content in contents.items():
            stats = measure_latency(content, num_threads=1, min_seconds=min_seconds, max_seconds=max(min_seconds, 10.0))
            taken[mode].append(stats.median_ms)
    return taken


def run_resolution(args, dataset, val, resolution: int) -> dict[str, dict]:
    """Every mode at ``resolution``: accuracy, size, latency, audit; printed as a table, returned by mode."""
    family = get_family(FAMILY)
    model, num_classes = family.load_pretrained(args.real / "darknet" / "yolov4-tiny.cfg",
                                                args.real / "darknet" / "yolov4-tiny.weights", resolution=resolution)
    heads, m = family.heads(num_classes), MeasureSpec()
    calibration = calibration_images(dataset.train, size=args.calibration, seed=0, resolution=resolution,
                                     preprocessing="stretch")
    rows, contents = {}, {}
    for mode in args.modes:
        start = time.perf_counter()
        converted = _convert(model, mode, family=family, calibration=calibration, float_layers=args.float_layers)
        convert_s = time.perf_counter() - start
        result = measure_accuracy(TFLiteDetector(converted.content, num_threads=1), val, heads=heads,
                                  resolution=resolution, preprocessing="stretch", score_threshold=m.score_threshold,
                                  iou_threshold=m.iou_threshold, max_detections=m.max_detections)
        contents[mode] = converted.content
        rows[mode] = {**result, "size_mb": len(converted.content) / 1e6, "convert_s": convert_s,
                      "kept": converted.audit.kept_ops}
        print(f"  {resolution} {mode}: map50 {result['map50']:.4f} map {result['map']:.4f} "
              f"(convert {convert_s:.0f}s, total {time.perf_counter() - start:.0f}s)", flush=True)
    for mode, medians in _latencies(contents, repeats=args.repeats, min_seconds=args.min_seconds).items():
        rows[mode]["latency_ms"] = statistics.median(medians)
        rows[mode]["latency_runs"] = medians
    _print_table(rows, resolution=resolution)
    return rows


def _print_table(rows: dict[str, dict], *, resolution: int) -> None:
    ref, plain = rows.get(REFERENCE), rows.get(PLAIN)
    print(f"\n{resolution} px | mode | AP50 | AP | AP50 drop | AP drop | size MB | latency ms (repeats) | vs int8 | "
          f"out of int8")
    for mode, row in rows.items():
        drop50 = f"{100 * (ref['map50'] - row['map50']):+.1f}" if ref else "-"
        drop = f"{100 * (ref['map'] - row['map']):+.1f}" if ref else "-"
        ratio = f"{row['latency_ms'] / plain['latency_ms']:.2f}x" if plain else "-"
        runs = "/".join(f"{t:.1f}" for t in row["latency_runs"])
        kept = "; ".join(row["kept"]) or "-"
        print(f"{resolution} | {mode} | {row['map50']:.3f} | {row['map']:.3f} | {drop50} | {drop} | "
              f"{row['size_mb']:.2f} | {row['latency_ms']:.1f} ({runs}) | {ratio} | {kept}")
    print(flush=True)


def best_recipe(rows: dict[str, dict]) -> str:
    """The last line: the recipe losing least (AP50 drop + AP drop) within the latency budget."""
    ref, plain = rows[REFERENCE], rows[PLAIN]
    # The goal's recipes compute int8 except the output convs: not the selective ones (float anywhere).
    candidates = [mode for mode in rows if mode in RECIPES and QUANT_MODES[mode].keeps != "chosen"]
    fast = [mode for mode in candidates if rows[mode]["latency_ms"] <= LATENCY_BUDGET * plain["latency_ms"]]

    def loss(mode):
        return (ref["map50"] - rows[mode]["map50"]) + (ref["map"] - rows[mode]["map"])

    pool = fast or candidates
    best = min(pool, key=loss)
    note = "" if fast else f" (none within {LATENCY_BUDGET:.2f}x int8 latency; the most accurate)"
    return (f"best int8 recipe: {best}: AP50 drop {100 * (ref['map50'] - rows[best]['map50']):.1f} pts, "
            f"AP drop {100 * (ref['map'] - rows[best]['map']):.1f} pts{note}")


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real, help="folder with darknet/ and coco128/")
    parser.add_argument("--resolutions", default="416,320")
    parser.add_argument("--modes", default=",".join([REFERENCE, PLAIN, *RECIPES]))
    parser.add_argument("--calibration", type=int, default=128, help="coco128 train images for modes that calibrate")
    parser.add_argument("--float-layers", type=int, default=4, help="float layers for the selective modes")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved latency measurements per model")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per latency measurement")
    parser.add_argument("--val-limit", type=int, default=None, help="only the first N val images")
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
    unknown = [mode for mode in args.modes if mode not in QUANT_MODES]
    if unknown or REFERENCE not in args.modes or PLAIN not in args.modes:
        parser.error(f"--modes must be modes of QUANT_MODES including {REFERENCE} and {PLAIN}, but got {args.modes}")

    dataset = load_yolo_dataset(args.real / "coco128" / "data.yaml")
    val = dataset.val if args.val_limit is None else Split(dataset.val.name, dataset.val.examples[: args.val_limit])
    print(f"coco128 {val.name}: {len(val.examples)} images, {val.num_boxes} boxes; stretch; calibration "
          f"{args.calibration} train images; latency: 1 thread, {args.repeats} interleaved repeats of "
          f">= {args.min_seconds:g} s", flush=True)
    results = {int(r): run_resolution(args, dataset, val, int(r)) for r in args.resolutions.split(",")}
    first = next(iter(results.values()))
    if any(mode in RECIPES for mode in first):
        print(best_recipe(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
