"""mAP of the official YOLOv4-tiny weights on coco128 val2017: Keras, float32 TFLite, int8 TFLite.

The reference point for ``spaces/yolov4_tiny_coco.yaml``: what the uncompressed, un-fine-tuned
model scores on the data the search measures on, by the same evaluator (pycocotools, score
threshold 0.001, NMS 0.45, 100 detections per image). Published COCO val2017 figures for these
weights (AlexeyAB, 416 px, 5000 images): AP50 40.2, AP 21.7.

    .venv/bin/python benchmarks/coco128_reference.py [--real ../shared/real] [--resolution 416]
        [--modes keras,float32,int8] [--calibration 128] [--preprocessing stretch] [--val-limit N]

Prints one line per model: mAP@0.5, mAP@[.5:.95], images, seconds. Timings on a shared machine
are noisy; the mAPs are deterministic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.data.dataset import Split  # noqa: E402
from search.data.yolo_format import load_yolo_dataset  # noqa: E402
from search.models import get_family  # noqa: E402
from search.objectives.accuracy import measure_accuracy  # noqa: E402
from search.quantize import QUANT_MODES, convert  # noqa: E402
from search.space import MeasureSpec  # noqa: E402
from search.stages.convert import calibration_images  # noqa: E402
from search.tflite_model import TFLiteDetector  # noqa: E402

FAMILY = "yolov4_tiny"  # the official weights' network (search.models)
PUBLISHED = {"map50": 0.402, "map": 0.217}  # AlexeyAB's YOLOv4-tiny on COCO val2017 at 416


def main(argv: list[str] | None = None) -> int:
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=default_real, help="folder with darknet/ and coco128/")
    parser.add_argument("--resolution", type=int, default=416)
    parser.add_argument("--modes", default="keras,float32", help="comma-separated: keras and/or TFLite modes")
    parser.add_argument("--calibration", type=int, default=128, help="coco128 train images for modes that calibrate")
    parser.add_argument("--preprocessing", default="stretch", choices=["stretch", "letterbox"])
    parser.add_argument("--val-limit", type=int, default=None, help="only the first N val images")
    args = parser.parse_args(argv)

    dataset = load_yolo_dataset(args.real / "coco128" / "data.yaml")
    val = dataset.val if args.val_limit is None else Split(dataset.val.name, dataset.val.examples[: args.val_limit])
    family = get_family(FAMILY)
    model, num_classes = family.load_pretrained(
        args.real / "darknet" / "yolov4-tiny.cfg", args.real / "darknet" / "yolov4-tiny.weights", resolution=args.resolution
    )
    heads, m = family.heads(num_classes), MeasureSpec()  # the spaces' default thresholds
    print(f"coco128 {val.name}: {len(val.examples)} images, {val.num_boxes} boxes; {args.resolution} px, "
          f"{args.preprocessing}; published COCO val2017: map50 {PUBLISHED['map50']:.3f} map {PUBLISHED['map']:.3f}")

    def score(predict) -> dict[str, float]:
        return measure_accuracy(predict, val, heads=heads, resolution=args.resolution, preprocessing=args.preprocessing,
                                score_threshold=m.score_threshold, iou_threshold=m.iou_threshold,
                                max_detections=m.max_detections)

    for mode in args.modes.split(","):
        start = time.perf_counter()
        if mode == "keras":
            result = score(lambda image: [head[0].numpy() for head in model(image[None], training=False)])
        else:
            calibration = None
            if QUANT_MODES[mode].needs_calibration:
                calibration = calibration_images(dataset.train, size=args.calibration, seed=0,
                                                 resolution=args.resolution, preprocessing=args.preprocessing)
            converted = convert(model, mode=mode, calibration_images=calibration)
            result = score(TFLiteDetector(converted.content, num_threads=1))
            mode = f"{mode} ({len(converted.content) / 1e6:.1f} MB" + (f", cal {args.calibration})" if calibration is not None else ")")
        print(f"{mode:<28} map50 {result['map50']:.4f}  map {result['map']:.4f}  [{time.perf_counter() - start:.0f}s]",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
