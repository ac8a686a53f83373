"""Which layers lose the most under int8: TFLite's quantization debugger, as a report and a ranking.

TFLite's ``QuantizationDebugger`` converts the model with a NumericVerify op after every quantized
op: each op also runs in float on the dequantized int8 inputs, so the difference it records is
that op's own rounding error, not the error it inherited. Per op, over the calibration images,
this module reports the RMSE of that difference and, the ranking key, ``rmse_over_scale``: the
RMSE in units of the op's output quantization step. Pure rounding gives ``1/sqrt(12) ~ 0.29``;
an op far above that loses information int8 cannot hold (TensorFlow's debugger guide uses the
same ratio to pick layers to keep in float).

``layer_error_report`` answers "why did accuracy drop?" for an exported int8 model;
``convert_selective`` is the ``int8_selective`` mode's conversion: rank, then leave the top
``float_layers`` ops in float (the debugger's ``denylisted_nodes``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from search.quantize import QUANT_MODES, _make_converter, _quiet_converter, get_mode

__all__ = ["REPORT_MODES", "layer_error_report", "write_layer_report", "convert_selective"]

# Modes whose per-layer error the debugger measures: calibrated full-integer int8. (qat_int8
# learned its ranges; the debugger would calibrate new ones and report a different model.)
REPORT_MODES = tuple(
    name for name, mode in QUANT_MODES.items() if mode.needs_calibration and mode.activation_dtype == "INT8"
)
RANK_KEY = "rmse_over_scale"
REPORT_FIELDS = ("rank", "layer", "op", RANK_KEY, "rmse", "mean_error", "max_abs_error", "scale", "zero_point", "elements", "tensor")


def _debugger(converter, images: np.ndarray):
    """Calibrate ``converter`` on ``images`` and run the NumericVerify model over them."""
    from search.compat import tf  # here, not at the top: importing this module stays cheap

    def dataset():
        for image in images:
            yield [image[None]]

    if converter.representative_dataset is None:  # convert() sets its own, to time calibration
        converter.representative_dataset = dataset
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset)
    debugger.run()
    return debugger


def _output_layers(model) -> dict[int, str]:
    """Element count -> name of the layer making that model output (the heads differ in grid size)."""
    sizes = {int(np.prod(output.shape[1:])): name for output, name in zip(model.outputs, model.output_names)}
    return sizes if len(sizes) == len(model.outputs) else {}


def _layer_name(tensor: str, *, elements: int, output_layers: dict[int, str]) -> str:
    """``yolov4_tiny/conv_5/Conv2D1`` -> ``conv_5``: the Keras layer a TFLite tensor came from.

    Model outputs are named ``StatefulPartitionedCall:k`` by the converter, in an order it does
    not promise; they are told apart by size.
    """
    parts = tensor.split(";")[0].split("/")
    if len(parts) > 2:
        return parts[1]
    return output_layers.get(elements, parts[0])


def _report(debugger, *, output_layers: dict[int, str]) -> list[dict]:
    """The debugger's per-op statistics (its own CSV dump, so only public API), worst first."""
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        elements = int(float(row["num_elements"]))
        rows.append(
            {
                "layer": _layer_name(row["tensor_name"], elements=elements, output_layers=output_layers),
                "op": row["op_name"],
                RANK_KEY: rmse / scale if scale > 0 else float("inf"),
                "rmse": rmse,
                "mean_error": float(row["mean_error"]),
                "max_abs_error": float(row["max_abs_error"]),
                "scale": scale,
                "zero_point": int(float(row["zero_point"])),
                "elements": elements,
                "tensor": row["tensor_name"],
            }
        )
    rows.sort(key=lambda row: row[RANK_KEY], reverse=True)
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]


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
    converter = _make_converter(
        model, spec=QUANT_MODES["int8_selective"], int8_io=False, resolution=int(model.input_shape[1])
    )
    with _quiet_converter():
        return _report(_debugger(converter, images), output_layers=_output_layers(model))


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


def convert_selective(converter, *, images: np.ndarray, float_layers: int) -> tuple[bytes, tuple[str, ...]]:
    """int8 with the ``float_layers`` ops of highest ``rmse_over_scale`` left in float.

    ``converter`` is configured for int8 (optimizations, no op-set restriction); returns the
    flatbuffer and the output tensor names of the ops kept in float, worst first.
    """
    from search.compat import tf

    if float_layers < 0:
        raise ValueError(f"float_layers must be >= 0, but got {float_layers}.")
    debugger = _debugger(converter, images)
    ranked = _report(debugger, output_layers={})  # ranks by tensor; layer names are not needed
    if float_layers > len(ranked):
        raise ValueError(f"float_layers must be <= the {len(ranked)} quantized ops, but got {float_layers}.")
    kept = tuple(row["tensor"] for row in ranked[:float_layers])
    if kept:
        # The same (default) options the ranking ran with, plus the denylist.
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(kept))
    return debugger.get_nondebug_quantized_model(), kept

