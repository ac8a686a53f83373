"""Whether TFLite's sparse tensor encoding pays, per quantization mode: bytes, gzip, latency, load time.

    .venv/bin/python benchmarks/sparse_encoding.py [--real ../shared/real] [--modes float32,float16,dynamic_range,int8]
        [--resolution 416] [--calibration 8] [--repeats 3] [--min-seconds 6] [--loads 5]

The official YOLOv4-tiny (80 classes; random weights without ``../shared/real``) is pruned 50%
unstructured and 2:4 by TFMOT's magnitude pruning with no fine-tune (``search.prune.prune_at_once``:
bytes and speed depend on where the zeros are, not on recovered accuracy), then converted in each
mode twice: dense, and with ``Optimize.EXPERIMENTAL_SPARSITY`` forced (``make_converter(sparse=True)``,
audited), so the sparse file is measured even where ``convert(sparse_encoding=True)`` would keep
the dense one. Per file: bytes, gzip bytes, the tensors stored sparse, load time (the median of
``--loads`` constructions of a LiteRT interpreter + ``allocate_tensors``, then the first invoke:
XNNPACK packs weights there, and a sparse file's DENSIFY runs at prepare), and latency: the
project's interleaved timing against the latency reference, ``--repeats`` times per file in
interleaved rounds, the median of the per-repeat ratios x the reference's latency measured at
the start of the timing phase. Also the max absolute difference of the heads' outputs between
the dense and the sparse file on one image. The machine is shared: latency is as quiet as it was.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a clone

import numpy as np  # noqa: E402

from search.models import get_family  # noqa: E402
from search.objectives.size import gzip_size_bytes, size_bytes  # noqa: E402
from search.pruning import PruningSpec  # noqa: E402
from search.quantize import QUANT_MODES, audit  # noqa: E402

FAMILY = get_family("yolov4_tiny")
NUM_CLASSES = 80
PRUNINGS = {
    "50% unstructured": PruningSpec(schedule="constant", target_sparsity=0.5),
    "2:4": PruningSpec(schedule="constant", structure="2:4"),
}


def base_model(real: Path, resolution: int):
    darknet = real / "darknet"
    if (darknet / "yolov4-tiny.weights").is_file():
        model, _ = FAMILY.load_pretrained(darknet / "yolov4-tiny.cfg", darknet / "yolov4-tiny.weights",
                                          resolution=resolution)
        return model, "official weights"
    from search.compat import keras

    keras.utils.set_random_seed(0)
    return FAMILY.build(num_classes=NUM_CLASSES, resolution=resolution), "random init (no ../shared/real)"


def calibration(real: Path, *, size: int, resolution: int) -> np.ndarray:
    data_yaml = real / "coco128" / "data.yaml"
    if data_yaml.is_file():
        from search.data.yolo_format import load_yolo_dataset
        from search.stages.convert import calibration_images

        return calibration_images(load_yolo_dataset(data_yaml).train, size=size, seed=0, resolution=resolution,
                                  preprocessing="stretch")
    return np.random.default_rng(0).random((size, resolution, resolution, 3), dtype=np.float32)


def converted(model, mode: str, *, images: np.ndarray, sparse: bool):
    """(flatbuffer, its audit), dense or with the sparse encoding forced (what ``convert`` compares)."""
    from search.quantize.converter import make_converter
    from search.quiet import quiet_stderr

    row = QUANT_MODES[mode]
    converter = make_converter(model, request=row.request, int8_io=False, resolution=model.input_shape[1],
                               sparse=sparse)
    if row.needs_calibration:
        converter.representative_dataset = lambda: ([image[None]] for image in images)
    with quiet_stderr():
        content, _ = row.strategy(converter, spec=row, images=images, float_layers=0, heads=())
    checked = audit(content, mode=mode)
    if not checked.passed:
        raise SystemExit(f"{mode} (sparse={sparse}) failed its audit: {checked.problems[0]}")
    return content, checked


def load_times(content: bytes, *, loads: int) -> tuple[float, float] | None:
    """(median ms of interpreter construction + allocate_tensors, ms of the first invoke after one),
    or None when LiteRT cannot prepare the file."""
    from search.timing.absolute import fixed_input
    from search.tflite_model import load_interpreter

    seconds = []
    for _ in range(loads):
        start = time.perf_counter()
        try:
            interpreter = load_interpreter(content, num_threads=1)
        except RuntimeError as error:
            print(f"# does not load in LiteRT: {str(error).splitlines()[0][:160]}", flush=True)
            return None
        seconds.append(time.perf_counter() - start)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], fixed_input(detail))
    start = time.perf_counter()
    interpreter.invoke()
    return statistics.median(seconds) * 1e3, (time.perf_counter() - start) * 1e3


def outputs(content: bytes, image: np.ndarray) -> list[np.ndarray]:
    from search.tflite_model import TFLiteDetector

    return TFLiteDetector(content)(image)


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real)
    parser.add_argument("--modes", default="float32,float16,dynamic_range,int8")
    parser.add_argument("--resolution", type=int, default=416)
    parser.add_argument("--calibration", type=int, default=8, help="calibration images (bytes do not depend on them)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved latency measurements per file")
    parser.add_argument("--min-seconds", type=float, default=6.0)
    parser.add_argument("--loads", type=int, default=5, help="interpreter constructions timed per file")
    args = parser.parse_args(argv)
    from search.prune import prune_at_once
    from search.timing.interleaved import measure_interleaved
    from search.timing.reference import ANCHOR, ANCHOR_MODE, node_reference_latency, reference_model

    model, source = base_model(args.real, args.resolution)
    images = calibration(args.real, size=args.calibration, resolution=args.resolution)
    image = images[0]
    print(f"# benchmarks/sparse_encoding.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
          f"yolov4-tiny ({source}), {args.resolution} px, magnitude pruning without fine-tune", flush=True)
    files = {}
    for label, spec in PRUNINGS.items():
        pruned = prune_at_once(model, spec, dense_layers=FAMILY.dense_layers(model))
        for mode in args.modes.split(","):
            for sparse in (False, True):
                content, checked = converted(pruned, mode, images=images, sparse=sparse)
                loaded = load_times(content, loads=args.loads)
                files[label, mode, sparse] = {"content": content, "bytes": size_bytes(content),
                                              "gzip": gzip_size_bytes(content), "sparse": len(checked.sparse_tensors),
                                              "loads": loaded is not None, "load_ms": (loaded or (0, 0))[0],
                                              "first_ms": (loaded or (0, 0))[1], "ratios": []}
            dense, sparse_file = files[label, mode, False], files[label, mode, True]
            diff = "does not load"
            if sparse_file["loads"]:
                diff = max(float(np.max(np.abs(a - b))) for a, b in
                           zip(outputs(dense["content"], image), outputs(sparse_file["content"], image)))
                diff = f"max |diff| {diff:.2g}"
            print(f"# {label} {mode}: dense {dense['bytes']} B, sparse {sparse_file['bytes']} B "
                  f"({sparse_file['sparse']} sparse tensors), {diff}", flush=True)

    reference = reference_model(ANCHOR, ANCHOR_MODE)  # the anchor alone, absolute: as before the rungs
    with tempfile.TemporaryDirectory() as fresh:  # the reference's latency now, not a node's cached one
        node = node_reference_latency(reference, num_threads=1, seconds=20.0, cache_dir=Path(fresh))
    print(f"# timing {len(files)} files x {args.repeats}; latency reference {node.median_ms:.2f} ms", flush=True)
    for _ in range(args.repeats):
        for row in files.values():
            if not row["loads"]:
                continue
            stats = measure_interleaved(row["content"], reference, num_threads=1, min_seconds=args.min_seconds,
                                        max_seconds=max(10.0, args.min_seconds))
            row["ratios"].append(stats.ratio)

    print(f"\n| pruning | mode | encoding | sparse tensors | bytes | gzip | latency {args.resolution} | load | "
          f"first invoke | sparse / dense bytes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (label, mode, sparse), row in files.items():
        dense = files[label, mode, False]
        timed = (f"{statistics.median(row['ratios']) * node.median_ms:.1f} ms | {row['load_ms']:.1f} ms | "
                 f"{row['first_ms']:.0f} ms") if row["loads"] else "does not load | | "
        print(f"| {label} | {mode} | {'sparse' if sparse else 'dense'} | {row['sparse']} | "
              f"{row['bytes'] / 1e6:.2f} MB | {row['gzip'] / 1e6:.2f} MB | {timed} | {row['bytes'] / dense['bytes']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
