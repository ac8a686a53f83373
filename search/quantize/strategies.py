"""How a mode's converter is run: each row of ``QUANT_MODES`` names one of these functions.

A strategy takes the configured converter (``converter.make_converter``, calibration already
attached), the calibration images and the ``float_layers`` count, and returns the flatbuffer and
the output tensor names of the ops it kept in float. ``convert`` calls the row's strategy and
audits what comes back, so a mode that converts differently is a new function and a new row, not
a branch in ``convert``. The table imports this module, so heavy imports stay inside functions.
"""

from __future__ import annotations

import numpy as np

from search.quantize.ranking import ranked_ops, run_debugger

__all__ = ["plain", "selective"]


def plain(converter, *, images: np.ndarray | None, float_layers: int) -> tuple[bytes, tuple[str, ...]]:
    """One converter call: the request alone decides the file (``float_layers`` is always 0 here)."""
    return converter.convert(), ()


def selective(converter, *, images: np.ndarray, float_layers: int) -> tuple[bytes, tuple[str, ...]]:
    """int8 with the ``float_layers`` ops of highest ``rmse_over_scale`` left in float.

    ``converter`` is configured for int8 (optimizations, no op-set restriction); the ops are
    ranked by the quantization debugger and kept in float through its ``denylisted_nodes``.
    Returns the flatbuffer and the output tensor names of the ops kept in float, worst first.
    """
    from search.compat import tf  # here, not at the top: reading the modes table stays cheap

    if float_layers < 0:
        raise ValueError(f"float_layers must be >= 0, but got {float_layers}.")
    debugger = run_debugger(converter, images)
    ranked = ranked_ops(debugger, output_layers={})  # ranks by tensor; layer names are not needed
    if float_layers > len(ranked):
        raise ValueError(f"float_layers must be <= the {len(ranked)} quantized ops, but got {float_layers}.")
    kept = tuple(row["tensor"] for row in ranked[:float_layers])
    if kept:
        # The same (default) options the ranking ran with, plus the denylist.
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(kept))
    return debugger.get_nondebug_quantized_model(), kept
