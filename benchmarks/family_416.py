"""Every cfg of the YOLOv4-tiny family at 416 px, 80 classes: parameters, MACs, size and latency.

    .venv/bin/python benchmarks/family_416.py [--threads 1] [--min-seconds 6] [--cfg-dir DIR] [--csv FILE]

The cfgs are ``../shared/real/darknet/family/*.cfg`` (or ``--cfg-dir``), built by the search's own
Darknet builder (``get_family("yolov4_tiny", cfg=...)``) with random weights: size and latency
do not depend on the weights' values. Per cfg:

- ``params``: the Keras model's parameters, which are exactly the floats of its Darknet ``.weights``;
- ``macs``: ``search.objectives.macs.count_macs``, and ``2 * macs`` as BFLOPs beside Darknet's own
  count, made here by an independent walk over the cfg text with Darknet's formulas
  (``convolutional_layer.c``: ``2 * nweights * out_h * out_w``; ``maxpool_layer.c``:
  ``size^2 * c * out_h * out_w``, comparisons Darknet adds to its printed total);
- float32 and int8 TFLite size (int8 calibrated on 4 random images: the size does not depend on them);
- latency of each as a trial measures it (``search.objectives.latency``: invokes alternated with
  the latency reference built at 416 px, ``latency_ms`` = median per-pair ratio x that reference's
  latency on this node, its link to the 256 px anchor x the anchor's; at least ``--min-seconds``,
  holding the node lock exclusively), and the raw median of the model's own invokes beside it
  (``_raw_ms``), which drifts with the host.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a clone

import numpy as np

from search.models import get_family
from search.models.yolov4_tiny.darknet import parse_cfg
from search.node_lock import exclusive, shared
from search.objectives import Artifact, MeasureContext
from search.objectives.latency import MEASUREMENT as LATENCY
from search.objectives.macs import count_macs
from search.quantize import convert
from search.space import MeasureSpec

RESOLUTION = 416
NUM_CLASSES = 80
CFG_DIR = Path(__file__).resolve().parents[2] / "shared" / "real" / "darknet" / "family"


def darknet_bflops(path: Path) -> tuple[float, float]:
    """(conv, max-pool) BFLOPs of the cfg at 416 by Darknet's formulas, from its text alone."""
    net, *layers = parse_cfg(path)
    h = w = RESOLUTION
    c, shapes, conv, pool = 3, [], 0.0, 0.0
    for i, s in enumerate(layers):
        kind = s["type"]
        if kind == "convolutional":
            size, stride, n, groups = int(s["size"]), int(s.get("stride", 1)), int(s["filters"]), int(s.get("groups", 1))
            pad = size // 2 if s.get("pad", "0") == "1" else int(s.get("padding", 0))
            h = w = (h + 2 * pad - size) // stride + 1
            conv += 2.0 * size * size * (c // groups) * n * h * w / 1e9
            c = n
        elif kind == "maxpool":
            size, stride = int(s["size"]), int(s.get("stride", 1))
            h = w = (h + size - 1 - size) // stride + 1  # Darknet's default padding: size - 1
            pool += size * size * c * h * w / 1e9
        elif kind == "route":
            sources = [i + int(v) if int(v) < 0 else int(v) for v in s["layers"].split(",")]
            h, w = shapes[sources[0]][:2]
            c = sum(shapes[j][2] for j in sources) // int(s.get("groups", 1))
        elif kind == "upsample":
            h, w = h * int(s["stride"]), w * int(s["stride"])
        shapes.append((h, w, c))  # [yolo] keeps its input's shape
    return conv, pool


def latency_context(*, threads: int, min_seconds: float) -> MeasureContext:
    """A trial's latency settings with ``threads`` and ``min_seconds``; the reference's rungs at
    ``RESOLUTION`` for the float32 and int8 models (and the anchor) built here."""
    from search.timing.reference import reference_mode
    from search.timing.rungs import latency_references

    spec = MeasureSpec(latency_threads=threads, latency_min_seconds=min_seconds,
                       latency_max_seconds=max(10.0, 3 * min_seconds))
    with shared():  # conversions, as the driver's
        references = latency_references((RESOLUTION, reference_mode(m)) for m in ("float32", "int8"))
    return MeasureContext(dataset=None, measure=spec, preprocessing="", heads=None, num_threads=threads,
                          reference=references)


def measure_cfg(path: Path, *, context: MeasureContext) -> dict:
    from search.compat import keras

    keras.utils.set_random_seed(0)
    with shared():  # as a trial's stages: no one else's latency measurement runs meanwhile
        model = get_family("yolov4_tiny", cfg=path).build(num_classes=NUM_CLASSES, resolution=RESOLUTION)
        images = np.random.default_rng(0).random((4, RESOLUTION, RESOLUTION, 3), np.float32)
        converted = {"float32": convert(model, mode="float32"), "int8": convert(model, mode="int8", calibration_images=images)}
    conv_bflops, pool_bflops = darknet_bflops(path)
    macs = count_macs(model)
    row = {"cfg": path.name, "params": model.count_params(), "macs": macs, "bflops_2x_macs": round(2 * macs / 1e9, 3),
           "darknet_conv_bflops": round(conv_bflops, 3), "darknet_total_bflops": round(conv_bflops + pool_bflops, 3)}
    for mode, made in converted.items():
        with exclusive():
            latency = LATENCY.measure(Artifact(content=made.content, model=None, resolution=RESOLUTION, mode=mode),
                                      context)
        row[f"{mode}_bytes"] = len(made.content)
        row[f"{mode}_ms"] = round(latency["latency_ms"], 1)
        row[f"{mode}_raw_ms"] = round(latency["latency_raw_ms"], 1)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=6.0)  # the spaces' latency_min_seconds
    parser.add_argument("--cfg-dir", type=Path, default=CFG_DIR)
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args(argv)
    cfgs = sorted(args.cfg_dir.glob("*.cfg"))
    if not cfgs:
        raise SystemExit(f"no .cfg files in {args.cfg_dir} (../shared/real is absent? give --cfg-dir)")
    context = latency_context(threads=args.threads, min_seconds=args.min_seconds)
    rows = [measure_cfg(path, context=context) for path in cfgs]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns) + " |")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
