"""Convert a Keras model to TFLite in one of the modes of ``QUANT_MODES``, and prove the result is one.

``convert`` checks the arguments against the mode's row, configures the converter with the row's
``request``, runs the row's ``strategy`` and ends with ``audit``: a file that is not what its mode
says is a ``ConversionError``, never a result.

With ``sparse_encoding`` the model is converted a second time with TFLite's sparse tensor
encoding (``Optimize.EXPERIMENTAL_SPARSITY``) and the smaller of the two audited files is kept:
the encoding stores a pruned kernel's non-zeros and their indices, which pays where a weight is
wider than its index (float32, float16: measured in the README) and costs where it is not (int8
weights with 50% zeros grow by ~30%), so the bytes decide, not the mode's name; a sparse file
LiteRT cannot prepare (XNNPACK refuses dynamic-range convs with sparse int8 kernels) is never kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from search.errors import ConversionError
from search.quantize.audit import Audit, audit
from search.quantize.converter import check_calibration_images, first_error_line, make_converter
from search.quantize.modes import QUANT_MODES, QuantMode, get_mode
from search.quiet import quiet_stderr

__all__ = ["ConvertedModel", "convert"]


@dataclass(frozen=True)
class ConvertedModel:
    """A TFLite flatbuffer that passed its audit, with what it cost to make."""

    content: bytes = field(repr=False)
    mode: str
    int8_io: bool
    audit: Audit
    float_layers: tuple[str, ...]  # int8_selective: output tensors of the ops kept in float, worst first
    calibration_size: int  # images run through the model to fix activation ranges (0: none)
    calibration_seconds: float  # part of convert_seconds spent running the calibration images
    convert_seconds: float  # wall time of the whole conversion, calibration included
    encoding: str = "dense"  # which flatbuffer was kept: "dense", or "sparse" (TFLite's sparse tensors)
    # sparse_encoding: the size of the flatbuffer that was not kept (None: only one was made), and why
    other_encoding_bytes: int | None = None
    encoding_reason: str = ""

    def summary(self) -> str:
        """The audit's line, and which encoding was kept when both were made (trials.csv's ``audit``)."""
        if self.other_encoding_bytes is None:
            return self.audit.summary()
        other = "dense" if self.encoding == "sparse" else "sparse"
        return (f"{self.audit.summary()}; kept {self.encoding} encoding: {len(self.content)} B "
                f"({other} {self.other_encoding_bytes} B: {self.encoding_reason})")


def convert(
    model,
    *,
    mode: str,
    calibration_images: np.ndarray | None = None,
    int8_io: bool = False,
    float_layers: int = 0,
    head_layers: tuple[str, ...] = (),
    sparse_encoding: bool = False,
) -> ConvertedModel:
    """Convert the Keras ``model`` to TFLite in ``mode`` and audit the result.

    ``calibration_images``: float32 ``(n, r, r, 3)`` in ``[0, 1]``, each fed to the calibrator
    exactly once per pass, for the modes that need calibration (and only those). ``int8_io``: int8
    input and output tensors instead of float32 (mode ``int8`` only), for targets that take raw
    bytes. ``float_layers``: for ``int8_selective``, how many of the ops most sensitive to int8
    stay in float (0: plain int8 through the same path). ``qat_int8`` takes a model from
    ``search.qat.quantize_aware_fine_tune``. ``head_layers``: the family's detection-output convs
    (``ModelFamily.head_layers``), which the modes that keep the heads out of int8 need (ignored by
    the others). ``sparse_encoding``: also convert with TFLite's sparse tensor encoding and keep
    the smaller file (modes whose row ``sparse_encodable``; ``ConvertedModel.encoding`` says
    which was kept). Raises ``ConversionError`` when the converter fails or the audit finds the
    model is not what ``mode`` says.
    """
    spec = get_mode(mode)
    resolution = _check_arguments(model, spec=spec, int8_io=int8_io, float_layers=float_layers)
    if sparse_encoding and not spec.sparse_encodable:
        raise ValueError(f"sparse_encoding applies to modes converted in one converter call "
                         f"({', '.join(m for m, row in QUANT_MODES.items() if row.sparse_encodable)}), "
                         f"but got mode '{mode}'.")
    heads = _head_shapes(model, head_layers) if spec.keeps_heads else ()
    images = check_calibration_images(calibration_images, spec=spec, resolution=resolution)

    start = time.perf_counter()
    made = _convert_once(model, spec=spec, images=images, int8_io=int8_io, resolution=resolution,
                         float_layers=float_layers, heads=heads, sparse=False)
    other_bytes = None
    if sparse_encoding:
        sparse = _convert_once(model, spec=spec, images=images, int8_io=int8_io, resolution=resolution,
                               float_layers=float_layers, heads=heads, sparse=True)
        dense = made
        made, reason = _smaller_loadable(dense, sparse)
        other_bytes = len((sparse if made is dense else dense).content)
        made = replace(made, calibration_seconds=dense.calibration_seconds + sparse.calibration_seconds,
                       encoding_reason=reason)
    return replace(made, calibration_size=0 if images is None else len(images),
                   convert_seconds=time.perf_counter() - start, other_encoding_bytes=other_bytes)


def _smaller_loadable(dense: ConvertedModel, sparse: ConvertedModel) -> tuple[ConvertedModel, str]:
    """The sparse file when it holds sparse tensors, is smaller (a tie keeps dense) and LiteRT can
    prepare it (XNNPACK refuses a dynamic-range conv whose int8 kernel is sparse); else the dense
    one. With the reason, for the record."""
    if sparse.encoding != "sparse":
        return dense, "the converter stored no tensor sparse"
    if len(sparse.content) >= len(dense.content):
        return dense, "not smaller"
    if not _loads(sparse.content):
        return dense, "LiteRT cannot prepare the sparse file"
    return sparse, "smaller"


def _convert_once(model, *, spec: QuantMode, images, int8_io: bool, resolution: int, float_layers: int, heads,
                  sparse: bool) -> ConvertedModel:
    """One audited conversion, dense or with the sparse tensor encoding."""
    mode = spec.name
    converter = make_converter(model, request=spec.request, int8_io=int8_io, resolution=resolution, sparse=sparse)
    feed = _CalibrationFeed(images)
    if images is not None:
        converter.representative_dataset = feed
    try:
        with quiet_stderr():  # MLIR notes on every conversion; errors arrive as exceptions
            content, kept_float = spec.strategy(converter, spec=spec, images=images, float_layers=float_layers,
                                                heads=heads)
    except Exception as error:  # the converter raises several unrelated types
        encoded = " with sparse encoding" if sparse else ""
        raise ConversionError(f"{mode} conversion{encoded} failed: {first_error_line(error)}") from error
    if images is not None and feed.passes == 0:
        raise ConversionError(f"{mode} conversion stopped before reading all {len(images)} calibration images.")
    checked = _passed_audit(content, mode=mode, int8_io=int8_io, float_layers=kept_float)
    if checked.sparse_tensors and not sparse:
        raise ConversionError(f"{mode} conversion stored {len(checked.sparse_tensors)} tensors sparse without "
                              f"sparse_encoding: {checked.sparse_tensors[0]}")
    return ConvertedModel(
        content=content,
        mode=mode,
        int8_io=int8_io,
        audit=checked,
        float_layers=kept_float,
        calibration_size=0,  # set by convert
        calibration_seconds=feed.seconds,
        convert_seconds=0.0,  # set by convert
        encoding="sparse" if checked.sparse_tensors else "dense",
    )


def _loads(content: bytes) -> bool:
    """Whether the LiteRT interpreter (with its default XNNPACK delegate) prepares ``content``."""
    from search.tflite_model import load_interpreter

    try:
        load_interpreter(content)
    except RuntimeError:  # "failed to delegate CONV_2D node ...": the delegate cannot take the op as stored
        return False
    return True


def _check_arguments(model, *, spec: QuantMode, int8_io: bool, float_layers: int) -> int:
    """Refuse arguments ``spec`` does not take; the model's (square, fixed) input resolution."""
    mode = spec.name
    if int8_io and mode != "int8":
        raise ValueError(f"int8_io applies to mode 'int8' only, but got mode '{mode}'.")
    if float_layers and not spec.selective:
        raise ValueError(f"float_layers applies to selective modes only, but got mode '{mode}'.")
    if spec.needs_qat and not _is_quantize_aware(model):
        raise ValueError(
            f"mode '{mode}' converts a quantization-aware-trained model (search.qat.quantize_aware_fine_tune), "
            f"but model {model.name!r} has no fake quantization."
        )
    _, height, width, _ = model.input_shape
    if height is None or height != width:
        raise ValueError(f"model input must be square with a fixed size to convert, but got {model.input_shape}.")
    return height


def _head_shapes(model, head_layers: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """The output shapes ``(h, w, channels)`` of the family's head convs, which the mode keeps out of int8."""
    if not head_layers:
        raise ValueError("head_layers must name the family's detection-output convs (ModelFamily.head_layers) "
                         "for a mode that keeps the heads, but got none.")
    names = {layer.name for layer in model.layers}
    missing = [name for name in head_layers if name not in names]
    if missing:
        raise ValueError(f"head_layers must be layers of model {model.name!r}, but got {', '.join(missing)}.")
    return tuple(tuple(int(d) for d in model.get_layer(name).output.shape[1:]) for name in head_layers)


def _is_quantize_aware(model) -> bool:
    """Whether ``model`` carries TFMOT fake quantization (``search.qat``), by its layer classes."""
    return any(type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer") for layer in model.layers)


class _CalibrationFeed:
    """The representative dataset: each image once per pass, batch 1, timing every full pass.

    The converter runs the float model between our yields, so a pass's wall time is its
    calibration time. (int16x8 makes two passes.)
    """

    def __init__(self, images: np.ndarray | None):
        self.images = images
        self.passes = 0
        self.seconds = 0.0

    def __call__(self):
        pass_start = time.perf_counter()
        for image in self.images:
            yield [image[None]]
        self.passes += 1
        self.seconds += time.perf_counter() - pass_start


def _passed_audit(content: bytes, *, mode: str, int8_io: bool, float_layers: tuple[str, ...]) -> Audit:
    """The audit of ``content``; a failed one is a ConversionError naming its first (causal) problem."""
    result = audit(content, mode=mode, int8_io=int8_io, float_layers=float_layers)
    if not result.passed:
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise ConversionError(f"{mode} audit failed: {result.problems[0]}{more}")
    return result
