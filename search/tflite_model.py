"""Run a converted YOLO detector's ``.tflite`` like the Keras model: image in, raw heads out.

The evaluator should not care which quantization mode made the file, so this wrapper hides the
two ways a TFLite model differs from its Keras source: integer input / output tensors (quantized
and dequantized here with the tensor's own scale and zero point), and output order (the converter
does not promise to keep Keras's order, so heads are told apart by grid size: given the heads'
strides they come back in that order, else coarsest, the smallest grid, first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

__all__ = ["TFLiteDetector", "load_interpreter"]


def load_interpreter(content: bytes | Path, *, num_threads: int = 1) -> Interpreter:
    """A LiteRT interpreter with tensors allocated, on ``num_threads`` threads.

    LiteRT applies its default CPU delegate (XNNPACK) itself; ``num_threads`` is given explicitly
    because its default is implementation-defined, and the thread count changes latency.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, but got {num_threads}.")
    if isinstance(content, (str, Path)):
        content = Path(content).read_bytes()
    interpreter = Interpreter(model_content=bytes(content), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def _quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if values.dtype.kind in "iu" and scale:
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return values.astype(np.float32)


class TFLiteDetector:
    """A detector flatbuffer as a callable: ``(r, r, 3)`` float image -> raw heads in a fixed order.

    ``strides``: the heads' strides in the Keras model's output order (``YoloHeads.strides``);
    the outputs come back in that order whatever order the converter chose. Without, coarsest first.
    """

    def __init__(self, content: bytes | Path, *, num_threads: int = 1, strides: Sequence[int] | None = None):
        self._interpreter = load_interpreter(content, num_threads=num_threads)
        (self._input,) = self._interpreter.get_input_details()
        _, height, width, channels = self._input["shape"]
        if height != width or channels != 3:
            raise ValueError(f"expected a square RGB input (1, r, r, 3), but the model takes {self._input['shape']}.")
        self.resolution = int(height)
        self._outputs = self._ordered_outputs(strides)

    def _ordered_outputs(self, strides: Sequence[int] | None) -> list[dict]:
        by_grid = sorted(self._interpreter.get_output_details(), key=lambda d: int(d["shape"][1]))
        if strides is None:
            return by_grid
        grids = {int(d["shape"][1]): d for d in by_grid}
        wanted = [self.resolution // stride for stride in strides]
        if sorted(grids) != sorted(wanted) or len(grids) != len(by_grid):
            raise ValueError(f"strides {tuple(strides)} at {self.resolution} px need grids {wanted}, but the model's heads have {sorted(grids)}.")
        return [grids[grid] for grid in wanted]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        """Raw head outputs for one ``image`` (float32 ``(r, r, 3)`` in ``[0, 1]``), each ``(H, W, C)``."""
        shape = (self.resolution, self.resolution, 3)
        if image.shape != shape:
            raise ValueError(f"image must have shape {shape}, but got {image.shape}.")
        batch = np.asarray(image, dtype=np.float32)[None]
        if self._input["dtype"] != np.float32:
            batch = _quantize(batch, self._input)
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return [_dequantize(self._interpreter.get_tensor(d["index"])[0], d) for d in self._outputs]
