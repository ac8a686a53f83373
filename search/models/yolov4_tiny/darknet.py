"""Darknet ``.cfg`` / ``.weights`` import and export for YOLOv4-tiny.

The model of ``search.models.yolov4_tiny.builder`` names each convolution ``conv_{i}`` (and its batch norm
``bn_{i}``) after its Darknet layer index, so a weights file maps onto it by walking the
convolutions in index order. Every check happens before the first weight is assigned: a bad file
raises ``WeightsError`` and leaves the model as it was. ``check_darknet_files`` makes the same
checks from the cfg text, the header and the file size alone, before anything is built or run.

Weights file layout (Darknet's ``load_weights``): int32 ``major, minor, revision``; ``seen`` as
int64 when ``major*10 + minor >= 2 and major < 1000``, else int32; then, for each convolution in
file order, float32 ``beta, gamma, mean, variance`` (batch-normalized) or ``bias`` (not), then the
kernel as ``(out, in, kh, kw)``.

Nothing here imports TensorFlow until a model is built (``load_darknet_model``): checking files
is what ``python -m search validate`` does, and it must stay quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.errors import WeightsError
from search.models.yolov4_tiny.constants import ANCHORS, MASKS, SCALE_X_Y

if TYPE_CHECKING:
    from search.compat import keras

# Headers seen in real Darknet files: 0.1.0 (YOLOv2 era), 0.2.0, 0.2.5 (AlexeyAB). Anything far
# outside is not a Darknet weights file (e.g. a Keras .h5 or a raw float dump read as int32).
_MAX_MAJOR, _MAX_MINOR, _MAX_REVISION = 1, 20, 10_000
# What `save_darknet_weights` writes: AlexeyAB's current header, with a 64-bit `seen`.
_SAVED_HEADER = (0, 2, 5)
# What a Keras .h5 starts with: the likeliest wrong file to be given as Darknet weights.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# The two head convolutions: their filters follow the class count, so the check derives them.
_CONV_HEAD = {"size": "1", "stride": "1", "pad": "1", "activation": "linear"}


def _conv(filters: int, size: int, stride: int = 1) -> tuple[str, dict]:
    settings = {"filters": str(filters), "size": str(size), "stride": str(stride), "pad": "1", "activation": "leaky"}
    return "convolutional", {"batch_normalize": "1", **settings}


def _route(layers: str, groups: bool = False) -> tuple[str, dict]:
    return "route", {"layers": layers, **({"groups": "2", "group_id": "1"} if groups else {})}


def _csp(filters: int) -> list[tuple[str, dict]]:
    return [
        _conv(filters, 3),
        _route("-1", groups=True),
        _conv(filters // 2, 3),
        _conv(filters // 2, 3),
        _route("-1,-2"),
        _conv(filters, 1),
        _route("-6,-1"),
        ("maxpool", {"size": "2", "stride": "2"}),
    ]


# What Darknet assumes for a key the cfg leaves out, where that differs from "must be given".
_DARKNET_DEFAULTS = {
    ("convolutional", "batch_normalize"): "0",
    ("convolutional", "stride"): "1",
    ("convolutional", "pad"): "0",
    ("convolutional", "activation"): "logistic",
    ("maxpool", "stride"): "1",
    ("upsample", "stride"): "2",
    ("route", "groups"): "1",
    ("route", "group_id"): "0",
}

# YOLOv4-tiny's layer sequence after [net], one row per Darknet layer: (section, settings that
# must match). `None` marks what depends on the class count: the head convolutions and [yolo].
_HEAD = ("convolutional", None)
_YOLO = ("yolo", None)
YOLOV4_TINY_LAYERS: tuple[tuple[str, dict | None], ...] = (
    _conv(32, 3, 2),
    _conv(64, 3, 2),
    *_csp(64),
    *_csp(128),
    *_csp(256),
    _conv(512, 3),
    _conv(256, 1),
    _conv(512, 3),
    _HEAD,
    _YOLO,
    _route("-4"),
    _conv(128, 1),
    ("upsample", {"stride": "2"}),
    _route("-1,23"),
    _conv(256, 3),
    _HEAD,
    _YOLO,
)


def yolov4_tiny_cfg_text(*, num_classes: int, resolution: int = 416) -> str:
    """The text of a YOLOv4-tiny cfg at ``num_classes`` (inference settings only), for export.

    Written from the same table ``check_yolov4_tiny_cfg`` checks against, so what this writes
    always passes that check, and Darknet or OpenCV can read it with ``save_darknet_weights``' file.
    """
    anchors = ",  ".join(f"{w},{h}" for w, h in ANCHORS)
    sections = [("net", {"batch": 1, "subdivisions": 1, "width": resolution, "height": resolution, "channels": 3})]
    masks = iter(MASKS)
    for kind, settings in YOLOV4_TINY_LAYERS:
        if kind == "yolo":
            mask = ",".join(str(a) for a in next(masks))
            settings = {"mask": mask, "anchors": anchors, "classes": num_classes, "num": len(ANCHORS), "scale_x_y": SCALE_X_Y}
        elif settings is None:
            settings = {"filters": len(MASKS[0]) * (num_classes + 5), **_CONV_HEAD}
        sections.append((kind, settings))
    return "\n".join(
        "\n".join([f"[{kind}]", *(f"{key}={value}" for key, value in settings.items()), ""]) for kind, settings in sections
    )


def parse_cfg(path) -> list[dict]:
    """Read a Darknet cfg file into its sections, ``[net]`` included, in file order (``parse_cfg_text``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Darknet cfg file not found: {path}")
    return parse_cfg_text(path.read_text(errors="replace"), source=path)


def parse_cfg_text(text: str, *, source) -> list[dict]:
    """A Darknet cfg's text -> its sections; ``source`` names it in errors (a path, or what holds it).

    Each section is a dict of its ``key: value`` strings (spaces removed from values, as Darknet
    does) plus ``"type"`` (e.g. ``"convolutional"``) and ``"line"`` (where it starts, for errors).
    """
    sections: list[dict] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append({"type": line[1:-1].strip().lower(), "line": number})
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.replace(" ", "").replace("\t", "")
        else:
            raise WeightsError(f"expected '[section]' or 'key=value', but got {line[:60]!r} ({source}, line {number})")
    if not sections:
        raise WeightsError(f"no [section] in Darknet cfg ({source})")
    return sections


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _check_yolo(section: dict, *, index: int, head: int, path) -> int:
    """Check one [yolo] layer against YOLOv4-tiny's; return its class count."""
    where = f"({path}, layer {index} [yolo], line {section['line']})"
    try:
        classes = int(section.get("classes", "20"))  # Darknet's default when the key is absent
        mask = _ints(section.get("mask", ""))
        anchors = _ints(section.get("anchors", ""))
        scale = float(section.get("scale_x_y", "1"))
    except ValueError as error:
        raise WeightsError(f"a [yolo] setting is not a number: {error} {where}") from None
    if classes < 1:
        raise WeightsError(f"classes must be >= 1, but got {classes} {where}")
    expected_anchors = [v for pair in ANCHORS for v in pair]
    if anchors != expected_anchors:
        raise WeightsError(f"anchors must be YOLOv4-tiny's {expected_anchors}, but got {anchors} {where}")
    if tuple(mask) != MASKS[head]:
        raise WeightsError(f"mask must be {list(MASKS[head])}, but got {mask} {where}")
    if abs(scale - SCALE_X_Y) > 1e-9:
        raise WeightsError(f"scale_x_y must be {SCALE_X_Y}, but got {scale} {where}")
    return classes


def check_yolov4_tiny_cfg(sections: list[dict], path) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Raise ``WeightsError`` unless ``sections`` are YOLOv4-tiny's; return ``(classes, anchors)``.

    The layer sequence, filters, sizes, strides, routes and both [yolo] layers must be the
    official cfg's; only ``classes`` may differ, with each head's ``filters = 3 * (classes + 5)``.
    ``anchors`` are ``(w, h)`` pairs in pixels of the network input.
    """
    layers = [s for s in sections if s["type"] != "net"]
    if len(layers) != len(YOLOV4_TINY_LAYERS):
        raise WeightsError(
            f"not a YOLOv4-tiny cfg: it must have {len(YOLOV4_TINY_LAYERS)} layers after [net], "
            f"but has {len(layers)} ({path})"
        )
    classes_per_head = []
    for index, (section, (kind, settings)) in enumerate(zip(layers, YOLOV4_TINY_LAYERS)):
        where = f"({path}, layer {index}, line {section['line']})"
        if section["type"] != kind:
            raise WeightsError(f"not a YOLOv4-tiny cfg: layer {index} must be [{kind}], but is [{section['type']}] {where}")
        if kind == "yolo":
            classes = _check_yolo(section, index=index, head=len(classes_per_head), path=path)
            head_conv = layers[index - 1]
            head_where = f"({path}, layer {index - 1}, line {head_conv['line']})"
            filters = len(MASKS[0]) * (classes + 5)
            if head_conv.get("filters") != str(filters):
                raise WeightsError(
                    f"the convolution before a [yolo] with classes={classes} must have filters=3*(classes+5)="
                    f"{filters}, but has filters={head_conv.get('filters')} {head_where}"
                )
            if head_conv.get("batch_normalize", "0") != "0":
                raise WeightsError(f"the convolution before a [yolo] must have no batch_normalize {head_where}")
            classes_per_head.append(classes)
            continue
        expected = _CONV_HEAD if settings is None else settings
        if kind == "route":
            expected = {"groups": "1", "group_id": "0", **expected}
        for key, value in expected.items():
            got = section.get(key, _DARKNET_DEFAULTS.get((kind, key)))
            if got != value:
                raise WeightsError(f"not a YOLOv4-tiny cfg: layer {index} [{kind}] needs {key}={value}, but has {got} {where}")
    if classes_per_head[0] != classes_per_head[1]:
        raise WeightsError(f"both [yolo] layers must have the same classes, but have {classes_per_head} ({path})")
    return classes_per_head[0], ANCHORS


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


def conv_layer_indices(model: keras.Model) -> list[int]:
    """Darknet indices of the model's convolutions, in file order."""
    return sorted(int(layer.name.split("_")[1]) for layer in model.layers if layer.name.startswith("conv_"))


def _conv_shapes(model: keras.Model) -> list[tuple[int, bool, tuple[int, ...]]]:
    """(Darknet index, batch-normalized?, Keras kernel shape) of each convolution, in file order."""
    names = {layer.name for layer in model.layers}
    return [
        (i, f"bn_{i}" in names, tuple(model.get_layer(f"conv_{i}").kernel.shape)) for i in conv_layer_indices(model)
    ]


def model_float_count(model: keras.Model) -> int:
    """float32 values a ``.weights`` file of ``model``'s convolutions holds after its header."""
    return sum(shape[-1] * (4 if bn else 1) + int(np.prod(shape)) for _, bn, shape in _conv_shapes(model))


def darknet_float_count(*, num_classes: int) -> int:
    """float32 values after the header of a YOLOv4-tiny ``.weights`` file at ``num_classes``.

    Counted from ``YOLOV4_TINY_LAYERS`` (channels followed through routes, groups and pools), so
    a file's size can be checked before any Keras model is built: 6,062,814 at 80 classes.
    """
    channels: list[int] = []
    count, previous = 0, 3
    for index, (kind, settings) in enumerate(YOLOV4_TINY_LAYERS):
        if kind == "convolutional":
            settings = settings or {"filters": str(len(MASKS[0]) * (num_classes + 5)), **_CONV_HEAD}
            filters, size = int(settings["filters"]), int(settings["size"])
            per_filter_extra = 4 if settings.get("batch_normalize") == "1" else 1  # beta, gamma, mean, var | bias
            count += filters * (previous * size * size + per_filter_extra)
            previous = filters
        elif kind == "route":
            sources = [index + v if v < 0 else v for v in _ints(settings["layers"])]
            previous = sum(channels[i] for i in sources) // int(settings.get("groups", "1"))
        channels.append(previous)  # maxpool, upsample and yolo keep their input's channels
    return count


def _classes_hint(*, num_classes: int, found: int, needed: int) -> str:
    """'; that size fits N classes' when ``found`` floats are this network at another class count."""
    per_class = darknet_float_count(num_classes=num_classes + 1) - needed
    extra, remainder = divmod(found - needed, per_class)
    if remainder == 0 and num_classes + extra >= 1:
        return f"; that size fits {num_classes + extra} classes"
    return ""


def _check_weights_file(path: Path, *, needed: int, num_classes: int) -> int:
    """Raise ``WeightsError`` unless ``path`` is a Darknet file of exactly ``needed`` floats; return the header size.

    Reads the first 20 bytes and the file size only, so it is as quick for a 24 MB file as for a tiny one.
    """
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
            f"truncated Darknet weights: YOLOv4-tiny at {num_classes} classes needs {needed:,} float32 after the "
            f"{header_size}-byte header, but the file holds {found:,} ({path})"
        )
    if found > needed or leftover_bytes:
        hint = _classes_hint(num_classes=num_classes, found=found, needed=needed) if not leftover_bytes else ""
        raise WeightsError(
            f"wrong size for these Darknet weights: YOLOv4-tiny at {num_classes} classes needs {needed:,} float32 "
            f"after the {header_size}-byte header, but the file holds {total - header_size:,} bytes "
            f"({found:,} float32){hint}; is it for another network or class count? ({path})"
        )
    return header_size


def check_darknet_files(cfg_path, weights_path) -> int:
    """Check a cfg and its weights without building a model; return the cfg's class count.

    The cfg must be YOLOv4-tiny's (``check_yolov4_tiny_cfg``), the weights file must have a Darknet
    header and exactly the size that class count needs. Raises ``WeightsError``, one line each.
    """
    num_classes, _ = check_yolov4_tiny_cfg(parse_cfg(cfg_path), cfg_path)
    _check_weights_file(Path(weights_path), needed=darknet_float_count(num_classes=num_classes), num_classes=num_classes)
    return num_classes


def load_darknet_weights(model: keras.Model, weights_path) -> None:
    """Assign a Darknet ``.weights`` file to ``model`` (built by ``build_yolov4_tiny``), in place.

    Raises ``WeightsError``, before assigning anything, when the file is missing, its header is not
    Darknet's, or it holds fewer or more floats than the model needs.
    """
    path = Path(weights_path)
    needed = model_float_count(model)
    num_classes = model.outputs[0].shape[-1] // len(MASKS[0]) - 5
    header_size = _check_weights_file(path, needed=needed, num_classes=num_classes)
    raw = path.read_bytes()

    floats = np.frombuffer(raw, "<f4", count=needed, offset=header_size)
    assignments, cursor = [], 0
    for index, bn, (kh, kw, cin, cout) in _conv_shapes(model):
        if bn:
            beta, gamma, mean, variance = floats[cursor : cursor + 4 * cout].reshape(4, cout)
            cursor += 4 * cout
            assignments.append((f"bn_{index}", [gamma, beta, mean, variance]))
        else:
            bias = floats[cursor : cursor + cout]
            cursor += cout
        kernel = floats[cursor : cursor + cout * cin * kh * kw].reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)
        cursor += kernel.size
        assignments.append((f"conv_{index}", [kernel] if bn else [kernel, bias]))
    for name, weights in assignments:
        model.get_layer(name).set_weights(weights)


def save_darknet_weights(model: keras.Model, path) -> None:
    """Write ``model``'s convolutions as a Darknet ``.weights`` file (header 0.2.5, ``seen`` 0)."""
    chunks = [np.asarray(_SAVED_HEADER, "<i4").tobytes(), np.zeros(1, "<i8").tobytes()]
    for index, bn, _ in _conv_shapes(model):
        conv = model.get_layer(f"conv_{index}").get_weights()
        if bn:
            gamma, beta, mean, variance = model.get_layer(f"bn_{index}").get_weights()
            chunks += [np.asarray(v, "<f4").tobytes() for v in (beta, gamma, mean, variance)]
        else:
            chunks.append(np.asarray(conv[1], "<f4").tobytes())
        chunks.append(np.ascontiguousarray(conv[0].transpose(3, 2, 0, 1), "<f4").tobytes())
    Path(path).write_bytes(b"".join(chunks))


def load_darknet_model(cfg_path, weights_path, *, resolution: int | None) -> tuple[keras.Model, int]:
    """Parse and check ``cfg_path``, build YOLOv4-tiny at ``resolution``, load ``weights_path``.

    Returns ``(model, num_classes)``.
    """
    from search.models.yolov4_tiny.builder import build_yolov4_tiny

    num_classes, _ = check_yolov4_tiny_cfg(parse_cfg(cfg_path), cfg_path)
    model = build_yolov4_tiny(num_classes=num_classes, resolution=resolution)
    load_darknet_weights(model, weights_path)
    return model, num_classes
