"""The export: the trial the space's rule picked, as ``export/model.tflite`` and a card that says
how it was made and measured (``export/model.json``), the fine-tuned float network as Darknet
``export/model.cfg`` + ``export/model.weights`` (for Darknet and OpenCV), and, when calibrated int8,
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

from search import storage
from search.baseline import COMPARISONS
from search.errors import RunDirError
from search.models import family_of
from search.objectives import measurements_for
from search.pareto import EXPORT_RULES
from search.provenance import package_versions
from search.record import TrialRecord
from search.space import Space
from search.trial import TrialContext

ERRORS = "quant_errors.csv"
DARKNET_CFG, DARKNET_WEIGHTS = "model.cfg", "model.weights"  # the float network, for Darknet and OpenCV


def write_error_report(record: TrialRecord, context: TrialContext, path: Path) -> str | None:
    """The per-layer quantization error of ``record``'s model, written to ``path``; None if written,
    else why there is none (not a calibrated int8 mode, or its stage is gone from the cache)."""
    from search.quantize import REPORT_MODES
    from search.stage_cache import WEIGHTS, cached

    mode = record.params.get("quantization")
    if mode not in REPORT_MODES:
        return f"mode {mode} is not calibrated int8 (reports exist for {', '.join(REPORT_MODES)})"
    stage = cached(context.stages_dir, record.stage_key) if record.stage_key else None
    if stage is None:
        return (f"its fine-tuned weights are no longer in the stage cache "
                f"({storage.join(context.stages_dir, record.stage_key, WEIGHTS)})")

    from search.compat import set_threads
    from search.params import TrialParams
    from search.quantize import layer_error_report, write_layer_report
    from search.stages.convert import trial_calibration_images
    from search.stages.fine_tune import load_stage_model

    space = context.space
    set_threads(space.budget.cpus_per_trial)
    params = TrialParams.from_config(record.params)
    model = load_stage_model(stage, family=family_of(space.model), resolution=params.resolution)
    images = trial_calibration_images(params, context)
    write_layer_report(layer_error_report(model, calibration_images=images, mode=mode), path)
    return None


def write_darknet_files(record: TrialRecord, context: TrialContext, folder: Path) -> str | None:
    """The trial's fine-tuned float network (pruned, before conversion) as Darknet cfg + weights in
    ``folder``; None if written, else why not (a QAT mode's weights, or its stage is gone)."""
    from search.quantize import QUANT_MODES
    from search.stage_cache import cached

    mode = record.params.get("quantization")
    if mode in QUANT_MODES and QUANT_MODES[mode].needs_qat:
        return f"mode {mode} fine-tunes again with fake quantization, which Darknet's float layers cannot hold"
    stage = cached(context.stages_dir, record.stage_key) if record.stage_key else None
    if stage is None:
        return "its fine-tuned weights are no longer in the stage cache"
    from search.stages.fine_tune import load_stage_model

    family = family_of(context.space.model)
    model = load_stage_model(stage, family=family, resolution=int(record.params["resolution"]))
    cfg, weights = family.darknet_files(model)
    (folder / DARKNET_CFG).write_text(cfg)
    (folder / DARKNET_WEIGHTS).write_bytes(weights)
    return None


def how_measured(record: TrialRecord, space: Space) -> dict[str, str]:
    """One sentence per measurement the trial ran (``Measurement.how``), by measurement name, and
    one per device target (``latency@<target>``): which node and hardware, and how."""
    said = {m.name: m.how(space.measure, record.metrics) for m in measurements_for(space.trial_measured_names)}
    for target in space.measure.devices:
        said[f"latency@{target.name}"] = _how_on_target(record.metrics, target)
    return said


def _how_on_target(metrics: dict[str, Any], target) -> str:
    from search.objectives.targets import MEASUREMENT, column

    def get(name: str) -> Any:
        return metrics.get(column(name, target.name))

    if get("latency_ms") is None:
        return f"not measured on {target.name} ({target.resource}): {get('error') or 'no result'}"
    return (f"on node {get('node')} ({get('host')}: {get('cpu_model')}, {get('cores')} cores, {get('arch')}, "
            f"{get('os')}), LiteRT {get('litert')}, {get('delegate')}, {get('threads')} thread(s), the node offering "
            f"{target.resource}: {MEASUREMENT.how(None, metrics)}; ratio {get('latency_ref_ratio')} x the "
            f"{get('latency_ref_resolution')} px {get('latency_ref_mode')} reference's {get('latency_ref_ms')} ms there "
            f"(its link {get('latency_ref_link')} x the anchor's {get('latency_anchor_ms')} ms) over {get('latency_runs')} pairs "
            f"(raw median {get('latency_raw_ms')} ms)")


def latency_reference_card(record: TrialRecord) -> dict[str, Any] | None:
    """Which model every latency of the card is a ratio to (the reference's rung at the trial's
    resolution and reference mode), and its latency and the anchor's on the measuring node."""
    m = record.metrics
    if not m.get("latency_ref_sha256"):
        return None
    from search.timing.reference import ANCHOR, ANCHOR_MODE, RECIPE, recipe_text

    return {"recipe": RECIPE, "what": recipe_text(m.get("latency_ref_resolution"), m.get("latency_ref_mode")),
            "resolution": m.get("latency_ref_resolution"), "mode": m.get("latency_ref_mode"),
            "sha256": m["latency_ref_sha256"], "latency_ms_on_node": m.get("latency_ref_ms"),
            "link_to_anchor": m.get("latency_ref_link"), "anchor_resolution": ANCHOR, "anchor_mode": ANCHOR_MODE,
            "anchor_latency_ms_on_node": m.get("latency_anchor_ms"),
            "node": record.node, "host": record.host}


def fine_tune_card(space: Space) -> dict[str, Any]:
    """How the trial's weights were fine-tuned from the base model (and, in a QAT mode, fine-tuned
    again): part of how the model was made, so a distilled model says so and from what."""
    f = space.fine_tune
    distilled = ("the unpruned base model's heads at the trial's resolution, as soft targets beside the YOLO loss "
                 "(search.train.distillation_loss), in the pruning fine-tune and in QAT") if f.distill_weight else None
    return {"steps": f.steps, "batch_size": f.batch_size, "learning_rate": f.learning_rate,
            "distill_weight": f.distill_weight, "distilled_from": distilled}


def model_card(record: TrialRecord, space: Space, *, names: list[str], base: dict[str, Any], data_source: str,
               error_report: str | None, why: str = "") -> dict[str, Any]:
    family = family_of(space.model)
    resolution = int(record.params["resolution"])
    e = space.export
    return {
        "model": f"{family.display_name}, TFLite",
        "trial_id": record.trial_id,
        "chosen_by": {"rule": e.rule, "meaning": EXPORT_RULES[e.rule].description, "why": why, "accuracy": e.accuracy,
                      "max_drop": e.max_drop, "prefer": space.export_prefers,
                      "objectives": {o.name: o.direction for o in space.objectives},
                      "constraints": {c.key: c.limit for c in space.constraints}, "feasible": record.feasible,
                      "max_size_bytes": e.max_size_bytes, "max_latency_ms": e.max_latency_ms},
        "against_baseline": {name: record.metrics[name] for name in COMPARISONS if name in record.metrics},
        "parameters": record.params,
        "fine_tune": fine_tune_card(space),
        "metrics": {name: record.metrics[name] for name in space.measured_names if name in record.metrics},
        "achieved_sparsity": record.sparsity,
        "audit": record.audit,
        "float_layers": ";".join(record.float_layers) or None,
        "quantization_error_report": ERRORS if error_report is None else f"none: {error_report}",
        "how_measured": {**how_measured(record, space), "data": f"the {data_source} val split",
                         "measured_on": record.host, "node": record.node},
        "measurement_details": {k: v for k, v in record.metrics.items() if k not in space.measured_names},
        "latency_reference": latency_reference_card(record),
        "input": {"shape": [1, resolution, resolution, 3], "dtype": "float32",
                  "layout": f"RGB scaled to [0, 1], {space.data.preprocessing} resize"},
        "outputs": {**family.card(len(names)), "classes": names},
        "base_model": base,
        "stage_seconds": record.seconds,
        "space": {"file": space.path, "sha256": space.sha256, "overrides": list(space.overrides)},
        "packages": package_versions(),
    }


def _error_report_or_why(record: TrialRecord, context: TrialContext, path: Path, echo) -> str | None:
    """Write the per-layer report; the debugger's failure must not cost the user the export itself."""
    started = time.perf_counter()
    try:
        why = write_error_report(record, context, path)  # why accuracy dropped, worst layer first
    except Exception as error:
        why = f"the quantization debugger failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
        path.unlink(missing_ok=True)
        echo(f"export: no per-layer error report ({why})")
    if why is None:
        echo(f"export: per-layer quantization error report in {time.perf_counter() - started:.0f}s")
    return why


EXPORT_DIR = "export"  # in the run directory


def set_aside_export(run_dir: Path) -> Path | None:
    """Move an earlier export out of the way (``export.before-resume-<n>``), kept whole, before a
    resumed run that measured its trials again exports anew; None when there is none."""
    final = run_dir / EXPORT_DIR
    if not final.exists():
        return None
    count = 1
    while (run_dir / f"{EXPORT_DIR}.before-resume-{count}").exists():
        count += 1
    aside = run_dir / f"{EXPORT_DIR}.before-resume-{count}"
    final.rename(aside)  # one rename: the earlier export is never half moved
    return aside


def export_trial(record: TrialRecord, context: TrialContext, run_dir: Path, *, base: dict[str, Any], why: str = "",
                 echo=print) -> Path:
    """Copy the trial's model, write its error report and card into ``run_dir/export``; returns that folder."""
    final = run_dir / EXPORT_DIR
    if final.exists():
        raise RunDirError(f"{final}: an export exists already; it is never overwritten")
    model = storage.read_bytes(record.model_path)  # the trial's file, in a folder or an object store
    if model is None:
        raise RunDirError(f"{record.model_path}: trial {record.trial_id}'s model is gone from the storage; nothing exported")
    tmp = run_dir / f".export.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "model.tflite").write_bytes(model)
    no_report = _error_report_or_why(record, context, tmp / ERRORS, echo)
    no_darknet = write_darknet_files(record, context, tmp)
    data = context.dataset
    card = model_card(record, context.space, names=list(data.names), base=base, data_source=data.source,
                      error_report=no_report, why=why)
    card["darknet"] = f"none: {no_darknet}" if no_darknet else f"{DARKNET_CFG} + {DARKNET_WEIGHTS}: the fine-tuned float network"
    (tmp / "model.json").write_text(json.dumps(card, indent=2, default=str))
    os.rename(tmp, final)
    return final
