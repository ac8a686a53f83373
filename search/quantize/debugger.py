"""Which layers lose the most under int8, as a report: "why did accuracy drop?" for an int8 model.

``layer_error_report`` calibrates the model as the mode does, runs TFLite's quantization debugger
over the calibration images and names each op's Keras layer; the ranking itself (each op's own
rounding error, in units of its quantization step) is ``ranking.ranked_ops``, which the
``int8_selective`` strategy uses too. ``write_layer_report`` saves the rows as CSV or JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from search.quantize.converter import make_converter
from search.quantize.modes import QUANT_MODES, ConverterRequest, get_mode
from search.quantize.ranking import RANK_KEY, ranked_ops, run_debugger
from search.quiet import quiet_stderr

__all__ = ["REPORT_MODES", "RANK_KEY", "UNRESTRICTED_INT8", "layer_error_report", "write_layer_report"]

# Modes whose per-layer error the debugger measures: calibrated full-integer int8. (qat_int8
# learned its ranges; the debugger would calibrate new ones and report a different model.)
REPORT_MODES = tuple(
    name for name, mode in QUANT_MODES.items() if mode.needs_calibration and mode.activation_dtype == "INT8"
)
# What the debugger converts with: int8 calibrated on the images, no op-set restriction (it adds
# its NumericVerify ops, which the int8-only op set would refuse).
UNRESTRICTED_INT8 = ConverterRequest(optimize=True)
REPORT_FIELDS = ("rank", "layer", "op", RANK_KEY, "rmse", "mean_error", "max_abs_error", "scale", "zero_point", "elements", "tensor")


def _output_layers(model) -> dict[int, str]:
    """Element count -> name of the layer making that model output (the heads differ in grid size)."""
    sizes = {int(np.prod(output.shape[1:])): name for output, name in zip(model.outputs, model.output_names)}
    return sizes if len(sizes) == len(model.outputs) else {}


def layer_error_report(model, *, calibration_images: np.ndarray, mode: str) -> list[dict]:
    """Per-op int8 error of ``model`` over ``calibration_images``, worst (highest ``rmse_over_scale``) first.

    Each row: ``rank``, ``layer`` (Keras layer name), ``op`` (TFLite op), ``rmse_over_scale``,
    ``rmse``, ``mean_error``, ``max_abs_error``, ``scale``, ``zero_point``, ``elements``,
    ``tensor`` (the TFLite tensor name, what ``int8_selective`` keeps in float).
    ``calibration_images``: float32 ``(n, r, r, 3)`` in ``[0, 1]``, the images the mode calibrated on.
    """
    get_mode(mode)
    if mode not in REPORT_MODES:
        raise ValueError(f"a per-layer int8 error report exists for modes {', '.join(REPORT_MODES)}, but got '{mode}'.")
    images = np.asarray(calibration_images, dtype=np.float32)
    converter = make_converter(model, request=UNRESTRICTED_INT8, int8_io=False, resolution=int(model.input_shape[1]))
    with quiet_stderr():
        return ranked_ops(run_debugger(converter, images), output_layers=_output_layers(model))


def write_layer_report(report: list[dict], path: str | Path) -> Path:
    """Write ``report`` (rows as ``layer_error_report`` returns them) worst first, as ``.csv`` or ``.json``."""
    path = Path(path)
    rows = sorted(report, key=lambda row: row[RANK_KEY], reverse=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({"rank_key": RANK_KEY, "layers": rows}, indent=1) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=REPORT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise ValueError(f"report path must end in .csv or .json, but got {path.name!r}.")
    return path
