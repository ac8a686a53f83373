"""The export: the trial the space's rule picked, as ``export/model.tflite`` and a card that says
how it was made and measured (``export/model.json``), and, when the model is calibrated int8,
``export/quant_errors.csv``: which layers lose the most to quantization, worst first.

The error report is made here, for the exported trial only (it takes 5-20 s, which every int8
trial used to pay): the trial's Keras model is rebuilt from its cached prune + fine-tune stage
(``stage_key`` in its row) and the same calibration images it was converted with.

The folder is written beside the run as ``.export.tmp`` and renamed into place, so a killed run
never leaves half an export, and an existing export is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from objectives import OBJECTIVES
from search.errors import RunDirError
from search.model.yolov4_tiny import ANCHORS, MASKS, SCALE_X_Y, STRIDES
from search.pareto import EXPORT_RULES
from search.provenance import package_versions
from search import storage
from search.space import Space
from search.stage_cache import WEIGHTS, stage_weights
from search.trial import TrialContext


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number


ERRORS = "quant_errors.csv"


def write_error_report(row: dict[str, Any], context: TrialContext, path: Path) -> str | None:
    """The per-layer quantization error of ``row``'s model, written to ``path``; None if written,
    else why there is none (not a calibrated int8 mode, or its stage is gone from the cache)."""
    from search.quant_debug import REPORT_MODES

    mode = row.get("param.quantization")
    if mode not in REPORT_MODES:
        return f"mode {mode} is not calibrated int8 (reports exist for {', '.join(REPORT_MODES)})"
    space, data = context.space, context.dataset
    stages = context.stages_dir or str(Path(space.shared_dir) / "stages")
    weights = stage_weights(stages, str(row["stage_key"])) if row.get("stage_key") else None
    if weights is None:
        return f"its fine-tuned weights are no longer in the stage cache ({storage.join(stages, str(row.get('stage_key')), WEIGHTS)})"

    from search.compat import set_threads
    from search.model.yolov4_tiny import build_yolov4_tiny
    from search.quant_debug import layer_error_report, write_layer_report
    from search.trial import calibration_images

    set_threads(space.budget.cpus_per_trial)
    resolution = int(_number(row["param.resolution"]))
    model = build_yolov4_tiny(num_classes=data.num_classes, resolution=resolution)
    model.load_weights(str(weights))
    images = calibration_images(data.train, size=int(_number(row["param.calibration_size"])), seed=space.budget.seed,
                                resolution=resolution, preprocessing=space.data.preprocessing)
    write_layer_report(layer_error_report(model, calibration_images=images, mode=mode), path)
    return None


def model_card(row: dict[str, Any], space: Space, *, names: list[str], base: dict[str, Any], data_source: str,
               error_report: str | None) -> dict[str, Any]:
    params = {k.removeprefix("param."): _number(v) for k, v in row.items() if k.startswith("param.") and v not in ("", None)}
    metrics = {name: _number(row[name]) for name in OBJECTIVES if row.get(name) not in ("", None)}
    return {
        "model": "YOLOv4-tiny (Darknet yolov4-tiny.cfg), TFLite",
        "trial_id": row["trial_id"],
        "chosen_by": {"rule": space.export.rule, "meaning": EXPORT_RULES[space.export.rule],
                      "accuracy": space.export.accuracy, "objectives": {o.name: o.direction for o in space.objectives},
                      "max_size_bytes": space.export.max_size_bytes, "max_latency_ms": space.export.max_latency_ms},
        "parameters": params,
        "metrics": metrics,
        "achieved_sparsity": _number(row["sparsity"]),
        "audit": row["audit"],
        "float_layers": row.get("float_layers") or None,
        "quantization_error_report": ERRORS if error_report is None else f"none: {error_report}",
        "how_measured": {
            "accuracy": f"pycocotools COCOeval (bbox) on the {data_source} val split; detections decoded from the "
                        f"converted model, score > {space.measure.score_threshold}, per-class NMS IoU "
                        f"{space.measure.iou_threshold}, at most {space.measure.max_detections} per image",
            "size": "bytes of model.tflite; size_gzip_bytes after gzip (level 6)",
            "latency": f"LiteRT interpreter (XNNPACK), {row['latency_threads']} thread(s), "
                       f"{space.measure.latency_warmup} warm-up invokes, then {row['latency_runs']} invokes timed "
                       f"over at least {space.measure.latency_min_seconds:g} s; median and p90 over the quieter half "
                       f"of its 0.5 s blocks (latency_median_all_ms: every invoke), pinned to core(s) "
                       f"{row.get('latency_cpus') or '?'}, no other trial computing on the node (node lock)",
            "cpu_model": row["cpu_model"],
            "latency_spread": _number(row["latency_spread"]),
        },
        "input": {"shape": [1, int(params["resolution"]), int(params["resolution"]), 3], "dtype": "float32",
                  "layout": f"RGB scaled to [0, 1], {space.data.preprocessing} resize"},
        "outputs": {"heads": "two raw YOLO heads, stride 32 then 16 (identify by grid size)",
                    "channels": "3 anchors x (tx, ty, tw, th, objectness, class logits)",
                    "anchors_pixels": ANCHORS, "masks": MASKS, "strides": STRIDES, "scale_x_y": SCALE_X_Y,
                    "classes": names},
        "base_model": base,
        "stage_seconds": {k: _number(v) for k, v in row.items() if k.startswith("time_")},
        "space": {"file": space.path, "sha256": space.sha256, "overrides": list(space.overrides)},
        "packages": package_versions(),
    }


def export_trial(row: dict[str, Any], context: TrialContext, run_dir: Path, *, base: dict[str, Any], echo=print) -> Path:
    """Copy the trial's model, write its error report and card into ``run_dir/export``; returns that folder."""
    final = run_dir / "export"
    if final.exists():
        raise RunDirError(f"{final}: an export exists already; it is never overwritten")
    tmp = run_dir / f".export.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model = storage.read_bytes(row["model_path"])  # the trial's file, in a folder or an object store
    if model is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunDirError(f"{row['model_path']}: trial {row['trial_id']}'s model is gone from the storage; nothing exported")
    (tmp / "model.tflite").write_bytes(model)
    started = time.perf_counter()
    try:
        no_report = write_error_report(row, context, tmp / ERRORS)  # why accuracy dropped, worst layer first
    except Exception as error:  # the debugger's failure must not cost the user the export itself
        no_report = f"the quantization debugger failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
        (tmp / ERRORS).unlink(missing_ok=True)
        echo(f"export: no per-layer error report ({no_report})")
    if no_report is None:
        echo(f"export: per-layer quantization error report in {time.perf_counter() - started:.0f}s")
    space, data = context.space, context.dataset
    card = model_card(row, space, names=list(data.names), base=base, data_source=data.source, error_report=no_report)
    (tmp / "model.json").write_text(json.dumps(card, indent=2, default=str))
    os.rename(tmp, final)
    return final
