"""Darknet ``.weights`` files: checked from their size, loaded into and saved from any built network.

The builder names each convolution ``conv_{i}`` (and its batch norm ``bn_{i}``) after its Darknet
layer index, so a weights file maps onto the model by walking the convolutions in index order.
Every check happens before the first weight is assigned: a bad file raises ``WeightsError`` and
leaves the model as it was. ``check_weights_file`` makes the same checks from the header and the
file size alone, before anything is built.

Layout (Darknet's ``load_weights``): int32 ``major, minor, revision``; ``seen`` as int64 when
``major*10 + minor >= 2 and major < 1000``, else int32; then, for each convolution in file order,
float32 ``beta, gamma, mean, variance`` (batch-normalized) or ``bias`` (not), then the kernel as
``(out, in / groups, kh, kw)``.

Numpy only at import: checking files is what ``python -m search validate`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.errors import WeightsError
from search.files import write_bytes_atomic

if TYPE_CHECKING:
    from search.compat import keras
    from search.models.darknet.network import Network

# Headers seen in real Darknet files: 0.1.0 (YOLOv2 era), 0.2.0, 0.2.5 (AlexeyAB). Anything far
# outside is not a Darknet weights file (e.g. a Keras .h5 or a raw float dump read as int32).
_MAX_MAJOR, _MAX_MINOR, _MAX_REVISION = 1, 20, 10_000
# What `save_darknet_weights` writes: AlexeyAB's current header, with a 64-bit `seen`.
_SAVED_HEADER = (0, 2, 5)
# What a Keras .h5 starts with: the likeliest wrong file to be given as Darknet weights.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _read_header(raw: bytes, path: Path, *, total: int) -> int:
    """Check the header (``raw`` is at least its first 16 bytes) and return its size in bytes (12 + 8 or 4 for ``seen``)."""
    if total < 16 or len(raw) < 16:
        raise WeightsError(f"not a Darknet weights file: {total} bytes is shorter than its header ({path})")
    major, minor, revision = (int(v) for v in np.frombuffer(raw, "<i4", count=3))
    if not (0 <= major <= _MAX_MAJOR and 0 <= minor <= _MAX_MINOR and 0 <= revision <= _MAX_REVISION):
        raise WeightsError(
            f"not a Darknet weights file: header version {major}.{minor}.{revision} is not one Darknet writes "
            f"(major 0..{_MAX_MAJOR}, minor 0..{_MAX_MINOR}) ({path})"
        )
    return 12 + (8 if major * 10 + minor >= 2 and major < 1000 else 4)


def _classes_hint(*, num_classes: int, per_class: int, found: int, needed: int) -> str:
    """'; that size fits N classes' when ``found`` floats are this network at another class count."""
    extra, remainder = divmod(found - needed, per_class)
    if remainder == 0 and num_classes + extra >= 1:
        return f"; that size fits {num_classes + extra} classes"
    return ""


def floats_per_class(network: Network) -> int:
    """How many more floats the weights file holds for each class more: the head convs grow."""
    from search.models.darknet.network import Yolo

    total = 0
    for yolo in network.of(Yolo):
        conv = network.layers[yolo.inputs[0]]
        total += len(yolo.op.mask) * (network.input_channels(conv) * conv.op.size**2 + (4 if conv.op.batch_normalize else 1))
    return total


def check_weights_file(path, *, network: Network, label: str) -> int:
    """Raise ``WeightsError`` unless ``path`` is a Darknet file of exactly ``network``'s floats; return the header size.

    ``label`` names the network in the message ("yolov4-tiny-3l.cfg"). Reads the first 20 bytes
    and the file size only, so it is as quick for a 24 MB file as for a tiny one.
    """
    path, needed, classes = Path(path), network.float_count, network.num_classes
    if not path.is_file():
        raise WeightsError(f"Darknet weights file not found: {path}")
    with path.open("rb") as f:
        head = f.read(20)
    if head.startswith(_HDF5_MAGIC):
        raise WeightsError(f"not a Darknet weights file: it is HDF5 (Keras .h5?); model.weights takes Darknet .weights ({path})")
    total = path.stat().st_size
    header_size = _read_header(head, path, total=total)
    found, leftover_bytes = divmod(total - header_size, 4)
    if found < needed:
        raise WeightsError(
            f"truncated Darknet weights: {label} at {classes} classes needs {needed:,} float32 after the "
            f"{header_size}-byte header, but the file holds {found:,} ({path})"
        )
    if found > needed or leftover_bytes:
        hint = "" if leftover_bytes else _classes_hint(num_classes=classes, per_class=floats_per_class(network),
                                                        found=found, needed=needed)
        raise WeightsError(
            f"wrong size for these Darknet weights: {label} at {classes} classes needs {needed:,} float32 "
            f"after the {header_size}-byte header, but the file holds {total - header_size:,} bytes "
            f"({found:,} float32){hint}; is it for another network or class count? ({path})"
        )
    return header_size


def conv_layer_indices(model: keras.Model) -> list[int]:
    """Darknet indices of the model's convolutions, in file order."""
    return sorted(int(layer.name.split("_")[1]) for layer in model.layers if layer.name.startswith("conv_"))


def _convs(model: keras.Model) -> list[tuple[int, bool, object]]:
    """(Darknet index, batch-normalized?, the conv layer) of each convolution, in file order."""
    names = {layer.name for layer in model.layers}
    return [(i, f"bn_{i}" in names, model.get_layer(f"conv_{i}")) for i in conv_layer_indices(model)]


def _is_depthwise(conv) -> bool:
    return type(conv).__name__ == "DepthwiseConv2D"


def _kernel_shape(conv) -> tuple[int, ...]:
    kernel = conv.depthwise_kernel if _is_depthwise(conv) else conv.kernel
    return tuple(int(d) for d in kernel.shape)


def _filters(conv) -> int:
    shape = _kernel_shape(conv)
    return shape[2] * shape[3] if _is_depthwise(conv) else shape[3]


def model_float_count(model: keras.Model) -> int:
    """float32 values a ``.weights`` file of ``model``'s convolutions holds after its header."""
    return sum(_filters(conv) * (4 if bn else 1) + int(np.prod(_kernel_shape(conv))) for _, bn, conv in _convs(model))


def _to_keras_kernel(flat: np.ndarray, conv) -> np.ndarray:
    """Darknet's ``(out, in/groups, kh, kw)`` floats -> the Keras kernel of ``conv``."""
    kh, kw, a, b = _kernel_shape(conv)
    if _is_depthwise(conv):  # Keras (kh, kw, in, multiplier); Darknet's output c*multiplier + m
        return flat.reshape(a, b, kh, kw).transpose(2, 3, 0, 1)
    return flat.reshape(b, a, kh, kw).transpose(2, 3, 1, 0)


def _to_darknet_kernel(kernel: np.ndarray, conv) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1) if _is_depthwise(conv) else kernel.transpose(3, 2, 0, 1)


def load_darknet_weights(model: keras.Model, weights_path, *, network: Network, label: str) -> None:
    """Assign a Darknet ``.weights`` file to ``model`` (``network`` built), in place.

    Raises ``WeightsError``, before assigning anything, when the file is missing, its header is not
    Darknet's, or it holds fewer or more floats than the network needs.
    """
    if model_float_count(model) != network.float_count:
        raise ValueError(f"model {model.name!r} has {model_float_count(model):,} Darknet floats, but its network "
                         f"{network.cfg.source} has {network.float_count:,}.")
    path = Path(weights_path)
    header_size = check_weights_file(path, network=network, label=label)
    floats = np.frombuffer(path.read_bytes(), "<f4", count=network.float_count, offset=header_size)
    assignments, cursor = [], 0
    for index, bn, conv in _convs(model):
        cout = _filters(conv)
        if bn:
            beta, gamma, mean, variance = floats[cursor : cursor + 4 * cout].reshape(4, cout)
            assignments.append((f"bn_{index}", [gamma, beta, mean, variance]))
        else:
            bias = floats[cursor : cursor + cout]
        cursor += cout * (4 if bn else 1)
        kernel = _to_keras_kernel(floats[cursor : cursor + int(np.prod(_kernel_shape(conv)))], conv)
        cursor += kernel.size
        assignments.append((f"conv_{index}", [kernel] if bn else [kernel, bias]))
    for name, weights in assignments:
        model.get_layer(name).set_weights(weights)


def darknet_weights_bytes(model: keras.Model) -> bytes:
    """``model``'s convolutions as a Darknet ``.weights`` file (header 0.2.5, ``seen`` 0)."""
    chunks = [np.asarray(_SAVED_HEADER, "<i4").tobytes(), np.zeros(1, "<i8").tobytes()]
    for index, bn, conv in _convs(model):
        weights = conv.get_weights()
        if bn:
            gamma, beta, mean, variance = model.get_layer(f"bn_{index}").get_weights()
            chunks += [np.asarray(v, "<f4").tobytes() for v in (beta, gamma, mean, variance)]
        else:
            chunks.append(np.asarray(weights[1], "<f4").tobytes())
        chunks.append(np.ascontiguousarray(_to_darknet_kernel(weights[0], conv), "<f4").tobytes())
    return b"".join(chunks)


def save_darknet_weights(model: keras.Model, path) -> None:
    """Write ``model``'s convolutions as a Darknet ``.weights`` file (atomically)."""
    write_bytes_atomic(path, darknet_weights_bytes(model))
