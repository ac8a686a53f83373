"""Which ops lose the most under int8, from TFLite's quantization debugger, worst first.

TFLite's ``QuantizationDebugger`` converts the model with a NumericVerify op after every quantized
op: each op also runs in float on the dequantized int8 inputs, so the difference it records is
that op's own rounding error, not the error it inherited. Per op, over the calibration images,
``ranked_ops`` gives the RMSE of that difference and, the ranking key, ``rmse_over_scale``: the
RMSE in units of the op's output quantization step. Pure rounding gives ``1/sqrt(12) ~ 0.29``;
an op far above that loses information int8 cannot hold (TensorFlow's debugger guide uses the
same ratio to pick layers to keep in float).

Both the ``int8_selective`` strategy (``strategies.selective``) and the error report
(``debugger``) rank through here; it imports nothing else of the package, so neither of them
depends on the other.
"""

from __future__ import annotations

import csv
import io

import numpy as np

__all__ = ["RANK_KEY", "run_debugger", "ranked_ops"]

RANK_KEY = "rmse_over_scale"


def run_debugger(converter, images: np.ndarray):
    """Calibrate ``converter`` on ``images`` and run the NumericVerify model over them."""
    from search.compat import tf  # here, not at the top: importing the package stays cheap

    def dataset():
        for image in images:
            yield [image[None]]

    if converter.representative_dataset is None:  # convert() sets its own, to time calibration
        converter.representative_dataset = dataset
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset)
    debugger.run()
    return debugger


def _layer_name(tensor: str, *, elements: int, output_layers: dict[int, str]) -> str:
    """``model/conv_5/Conv2D1`` -> ``conv_5``: the Keras layer a TFLite tensor came from.

    Keras names a tensor ``<model name>/<layer name>/<op>``; fused ops list several names
    separated by ``;``, the first is enough. Model outputs are named ``StatefulPartitionedCall:k``
    by the converter, in an order it does not promise; they are told apart by size.
    """
    parts = tensor.split(";")[0].split("/")
    if len(parts) > 2:
        return parts[1]
    return output_layers.get(elements, parts[0])


def _row(stats: dict[str, str], *, output_layers: dict[int, str]) -> dict:
    """One op's statistics from the debugger's CSV, as numbers, with its Keras layer."""
    scale = float(stats["scale"])
    rmse = float(np.sqrt(float(stats["mean_squared_error"])))
    elements = int(float(stats["num_elements"]))
    return {
        "layer": _layer_name(stats["tensor_name"], elements=elements, output_layers=output_layers),
        "op": stats["op_name"],
        RANK_KEY: rmse / scale if scale > 0 else float("inf"),
        "rmse": rmse,
        "mean_error": float(stats["mean_error"]),
        "max_abs_error": float(stats["max_abs_error"]),
        "scale": scale,
        "zero_point": int(float(stats["zero_point"])),
        "elements": elements,
        "tensor": stats["tensor_name"],
    }


def ranked_ops(debugger, *, output_layers: dict[int, str]) -> list[dict]:
    """The debugger's per-op statistics (its own CSV dump, so only public API), worst first.

    ``output_layers``: element count -> name of the layer making that model output, to name the
    outputs' ops (empty: they keep the converter's name).
    """
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = [_row(stats, output_layers=output_layers) for stats in csv.DictReader(io.StringIO(dump.getvalue()))]
    rows.sort(key=lambda row: row[RANK_KEY], reverse=True)
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]
