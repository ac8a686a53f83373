"""Reading a dataset in the YOLO (Ultralytics) layout: a ``data.yaml`` and parallel label files.

``data.yaml`` gives ``path`` (relative to the yaml's folder), the ``train`` and ``val`` image
folders (relative to ``path``) and ``names`` (a list, or a ``{index: name}`` mapping). The labels
of ``.../images/.../x.jpg`` are in ``.../labels/.../x.txt``, one ``class cx cy w h`` line per box,
normalized. An image without a label file is a negative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from search.data.boxes import checked_box
from search.data.dataset import Dataset, Example, Split, no_boxes
from search.errors import DataError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


def load_yolo_dataset(data_yaml: Path) -> Dataset:
    """The dataset described by ``data_yaml``; any problem is a one-line ``DataError``."""
    data_yaml = Path(data_yaml)
    config = _read_yaml(data_yaml)
    names = _names(config, data_yaml)
    root = data_yaml.parent / str(config.get("path") or ".")
    splits = {}
    for split_name in SPLITS:
        if not isinstance(config.get(split_name), str):
            raise DataError(
                f"{split_name} must be an image folder relative to path, but got "
                f"{config.get(split_name)!r} ({data_yaml}, key {split_name})"
            )
        folder = root / config[split_name]
        splits[split_name] = _load_split(split_name, folder, num_classes=len(names), data_yaml=data_yaml)
    return Dataset(names=names, train=splits["train"], val=splits["val"], source=str(data_yaml))


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the image header of {path}: {error}") from None


def _read_yaml(data_yaml: Path) -> dict:
    if not data_yaml.is_file():
        raise DataError(f"data file not found: {data_yaml}")
    try:
        config = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{data_yaml} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(config, dict):
        raise DataError(f"{data_yaml} must be a mapping with keys path, train, val, names, but got {config!r}")
    return config


def _names(config: dict, data_yaml: Path) -> tuple[str, ...]:
    names = config.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(
                f"names as a mapping must have the keys 0..{len(names) - 1}, but got "
                f"{sorted(names, key=str)} ({data_yaml}, key names)"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(
            f"names must be a non-empty list of class names or an {{index: name}} mapping, "
            f"but got {names!r} ({data_yaml}, key names)"
        )
    if "nc" in config and config["nc"] != len(names):
        raise DataError(f"nc is {config['nc']!r} but names has {len(names)} entries ({data_yaml}, key nc)")
    return tuple(str(n) for n in names)


def labels_folder(images_folder: Path) -> Path:
    """Ultralytics' rule: the last ``images`` component of the path becomes ``labels``."""
    parts = list(images_folder.parts)
    if "images" not in parts:
        raise DataError(
            f"image folder {images_folder} has no 'images' path component, so its labels folder "
            f"(the same path with 'labels') cannot be found"
        )
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts)


def _load_split(name: str, folder: Path, *, num_classes: int, data_yaml: Path) -> Split:
    if not folder.is_dir():
        raise DataError(f"{name} image folder not found: {folder} ({data_yaml}, key {name})")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(
            f"{name} image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) ({data_yaml}, key {name})"
        )
    labels = labels_folder(folder)
    if not labels.is_dir():
        raise DataError(f"labels folder not found: {labels} (the twin of {folder}, from {data_yaml})")
    examples = []
    for image_id, image_path in enumerate(images):
        width, height = image_size(image_path)
        label_path = labels / image_path.relative_to(folder).with_suffix(".txt")
        boxes, classes = _read_labels(label_path, num_classes=num_classes)
        examples.append(Example(image_path, width, height, boxes, classes, image_id))
    return Split(name, tuple(examples))


def _read_labels(label_path: Path, *, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not label_path.is_file():
        return no_boxes()
    boxes, classes = [], []
    for line_number, line in enumerate(label_path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}, line {line_number}"
        if len(fields) != 5:
            raise DataError(f"expected 5 values 'class cx cy w h', but got {len(fields)}: {line.strip()!r} ({where})")
        try:
            class_value = float(fields[0])
            cx, cy, w, h = (float(f) for f in fields[1:])
        except ValueError:
            raise DataError(f"expected numbers 'class cx cy w h', but got {line.strip()!r} ({where})") from None
        if not class_value.is_integer():
            raise DataError(f"label class must be an integer, but got {fields[0]!r} ({where})")
        if not 0 <= class_value < num_classes:
            raise DataError(f"label class {int(class_value)} is out of range 0..{num_classes - 1} ({where})")
        boxes.append(checked_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, where=where))
        classes.append(int(class_value))
    if not boxes:
        return no_boxes()
    return np.asarray(boxes, np.float32), np.asarray(classes, np.int32)
