"""How a mode's converter is run: each row of ``QUANT_MODES`` names one of these functions.

A strategy takes the configured converter (``converter.make_converter``, calibration already
attached), its row (``spec``), the calibration images, the ``float_layers`` count and the shapes
of the family's detection-output convs (``heads``: ``(h, w, channels)`` each, empty when the
caller gave none), and returns the flatbuffer and the output tensor names of the ops it kept
out of the row's activation dtype. ``convert`` calls the row's strategy and audits what comes
back, so a mode that converts differently is a new function and a new row, not a branch in
``convert``. The table imports this module, so heavy imports stay inside functions.
"""

from __future__ import annotations

import numpy as np

from search.quantize.ranking import ranked_ops, run_debugger

__all__ = ["plain", "selective", "selective_by_heads", "recipe"]


def plain(converter, *, spec, images: np.ndarray | None, float_layers: int, heads=()) -> tuple[bytes, tuple[str, ...]]:
    """One converter call: the request alone decides the file (``float_layers`` is always 0 here)."""
    return converter.convert(), ()


def selective(converter, *, spec, images: np.ndarray, float_layers: int, heads=()) -> tuple[bytes, tuple[str, ...]]:
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


def selective_by_heads(converter, *, spec, images: np.ndarray, float_layers: int, heads=()) -> tuple[bytes, tuple[str, ...]]:
    """int8 with the ``float_layers`` conv layers (a conv and its activation) whose float version
    brings the heads' outputs closest to float (``recipes.rank_by_head_error``): the detector's
    measure, not each op's own rounding. Returns the kept ops' output tensors, best layer first."""
    from search.quantize import recipes  # here: TensorFlow and the TFLite schema load on use

    if float_layers < 0:
        raise ValueError(f"float_layers must be >= 0, but got {float_layers}.")
    calibrated = recipes.calibrate_only(converter)
    ranked = recipes.rank_by_head_error(calibrated, images) if float_layers else []
    if float_layers > len(ranked) and float_layers:
        raise ValueError(f"float_layers must be <= the {len(ranked)} conv layers, but got {float_layers}.")
    kept = tuple(name for nodes, _ in ranked[:float_layers] for name in nodes)
    return recipes.quantize(calibrated, float_nodes=kept), kept


def recipe(converter, *, spec, images: np.ndarray, float_layers: int, heads=()) -> tuple[bytes, tuple[str, ...]]:
    """Calibrate once, set the row's activation ranges, keep the row's ops out of int8, quantize.

    ``spec.ranges``: ``minmax`` keeps the calibrator's ranges, ``percentile`` replaces them by
    each tensor's percentiles over ``images``. ``spec.keeps == "heads"``: the ops making the
    model's outputs, back to the convs of shapes ``heads``, stay float; with
    ``spec.kept_weight_dtype == "INT8"`` their kernels are then stored int8 (dynamic range).
    ``spec.bias_correction``: each int8 conv's bias absorbs its mean error per channel.
    Returns the flatbuffer and the output tensor names of the kept ops.
    """
    from search.quantize import recipes  # here: TensorFlow and the TFLite schema load on use

    calibrated = recipes.calibrate_only(converter)
    if spec.ranges == "percentile":
        calibrated = recipes.with_percentile_ranges(calibrated, images)
    kept = recipes.head_nodes(calibrated, heads) if spec.keeps_heads else ()
    content = recipes.quantize(calibrated, float_nodes=kept)
    if spec.bias_correction:
        errors = recipes.channel_mean_errors(calibrated, images, float_nodes=kept)
        content = recipes.with_corrected_biases(content, errors)
    if kept and spec.kept_weight_dtype == "INT8":
        content = recipes.with_int8_kernels(content, nodes=kept)
    return content, kept
