"""A TFLite converter configured as a mode's ``ConverterRequest``, and the checks around it.

Shared by ``convert`` (every mode) and the error report (``debugger``), so neither borrows the
other's private helpers. TensorFlow is imported inside ``make_converter`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from search.quantize.modes import ConverterRequest, QuantMode

__all__ = ["make_converter", "check_calibration_images", "first_error_line"]


def make_converter(model, *, request: ConverterRequest, int8_io: bool, resolution: int, sparse: bool = False):
    """A TFLiteConverter for ``model`` at batch 1 and ``resolution``, with the settings ``request`` names.

    ``sparse``: also ``Optimize.EXPERIMENTAL_SPARSITY``, TFLite's sparse tensor encoding of
    kernels that are mostly zeros (the converter decides per tensor; each then runs through a
    DENSIFY op when the interpreter prepares the model, so only the file changes).
    """
    from search.compat import tf  # here, not at the top: reading QUANT_MODES must stay cheap

    # A concrete function with batch 1, saved through a bare tf.Module holding the variables:
    # handing the converter the Keras model instead makes it serialise every layer's functions
    # (3-4x slower for this model) for nothing the flatbuffer keeps.
    signature = tf.TensorSpec((1, resolution, resolution, 3), tf.float32, name="image")
    function = tf.function(lambda image: model(image, training=False)).get_concrete_function(signature)
    holder = tf.Module()
    holder.variables_to_keep = list(model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)

    if request.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if request.supported_types:
        converter.target_spec.supported_types = [tf.as_dtype(name) for name in request.supported_types]
    if request.supported_ops:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, name) for name in request.supported_ops]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def check_calibration_images(images, *, spec: QuantMode, resolution: int) -> np.ndarray | None:
    """``images`` as the float32 ``(n, r, r, 3)`` array in ``[0, 1]`` that ``spec`` calibrates on,
    or None for a mode without calibration; any other combination is a ``ValueError``."""
    if not spec.needs_calibration:
        if images is not None:
            raise ValueError(f"mode '{spec.name}' takes no calibration images, but {len(images)} were given.")
        return None
    if images is None or len(images) == 0:
        raise ValueError(f"mode '{spec.name}' needs calibration images, but none were given.")
    images = np.asarray(images)
    if images.dtype != np.float32 or images.shape[1:] != (resolution, resolution, 3):
        raise ValueError(
            f"calibration images must be float32 (n, {resolution}, {resolution}, 3), "
            f"but got {images.dtype} {images.shape}."
        )
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(
            f"calibration images must be in [0, 1] like the model's input, but span "
            f"[{images.min():.3g}, {images.max():.3g}]."
        )
    return images


def first_error_line(error: Exception) -> str:
    """The converter's exceptions are pages of MLIR; the line starting with ``error:`` says why."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line[line.index("error:") :]
    return lines[0] if lines else type(error).__name__
