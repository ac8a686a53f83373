"""The export: the trial the space's rule picked, as ``export/model.tflite`` and a card that says
how it was made and measured (``export/model.json``).

The folder is written beside the run as ``.export.tmp`` and renamed into place, so a killed run
never leaves half an export, and an existing export is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from objectives import OBJECTIVES
from search.errors import RunDirError
from search.model.yolov4_tiny import ANCHORS, MASKS, SCALE_X_Y, STRIDES
from search.pareto import EXPORT_RULES
from search.provenance import package_versions
from search.space import Space


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number


def errors_exist(row: dict[str, Any]) -> bool:
    return Path(row["model_path"]).with_name("quant_errors.csv").exists()


def model_card(row: dict[str, Any], space: Space, *, names: list[str], base: dict[str, Any], data_source: str) -> dict[str, Any]:
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
        "quantization_error_report": "quant_errors.csv" if errors_exist(row) else None,
        "how_measured": {
            "accuracy": f"pycocotools COCOeval (bbox) on the {data_source} val split; detections decoded from the "
                        f"converted model, score > {space.measure.score_threshold}, per-class NMS IoU "
                        f"{space.measure.iou_threshold}, at most {space.measure.max_detections} per image",
            "size": "bytes of model.tflite; size_gzip_bytes after gzip (level 6)",
            "latency": f"LiteRT interpreter (XNNPACK), {row['latency_threads']} thread(s), "
                       f"{space.measure.latency_warmup} warm-up invokes, median and p90 of {row['latency_runs']} "
                       f"timed invokes, no other trial computing on the node (node lock)",
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


def export_trial(row: dict[str, Any], space: Space, run_dir: Path, *, names: list[str], base: dict[str, Any],
                 data_source: str) -> Path:
    """Copy the trial's model and write its card into ``run_dir/export``; returns that folder."""
    final = run_dir / "export"
    if final.exists():
        raise RunDirError(f"{final}: an export exists already; it is never overwritten")
    tmp = run_dir / f".export.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copyfile(row["model_path"], tmp / "model.tflite")
    errors = Path(row["model_path"]).with_name("quant_errors.csv")
    if errors.exists():  # per-layer quantization error, worst first: why accuracy dropped
        shutil.copyfile(errors, tmp / "quant_errors.csv")
    card = model_card(row, space, names=names, base=base, data_source=data_source)
    (tmp / "model.json").write_text(json.dumps(card, indent=2, default=str))
    os.rename(tmp, final)
    return final
