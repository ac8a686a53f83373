"""Reading a dataset in the COCO layout: an image folder and an ``instances_*.json`` per split.

Categories become contiguous class indices in sorted id order (COCO's 1..90 -> 0..79), and
``Dataset.category_ids`` keeps the way back. ``bbox`` is ``[x, y, w, h]`` in pixels; crowd boxes
are skipped, as COCO's own evaluation ignores them; an image without annotations is a negative.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from search.data.boxes import checked_box
from search.data.dataset import Dataset, Example, Split, no_boxes
from search.data.yolo_format import image_size
from search.errors import DataError


def load_coco_dataset(
    *,
    train_images: Path,
    train_annotations: Path,
    val_images: Path,
    val_annotations: Path,
    names: tuple[str, ...] | None = None,
) -> Dataset:
    """Both splits; ``names`` overrides the categories' own names (same count, same order)."""
    train_json = _read_json(Path(train_annotations))
    val_json = _read_json(Path(val_annotations))
    category_ids, category_names = _categories(train_json, Path(train_annotations))
    val_ids, _ = _categories(val_json, Path(val_annotations))
    if val_ids != category_ids:
        raise DataError(
            f"val categories {list(val_ids)} differ from train categories {list(category_ids)} "
            f"({val_annotations} vs {train_annotations})"
        )
    if names is not None:
        names = tuple(str(n) for n in names)
        if len(names) != len(category_ids):
            raise DataError(
                f"names has {len(names)} entries but {train_annotations} has {len(category_ids)} categories"
            )
    index_of = {category_id: i for i, category_id in enumerate(category_ids)}
    train = _load_split("train", Path(train_images), train_json, Path(train_annotations), index_of)
    val = _load_split("val", Path(val_images), val_json, Path(val_annotations), index_of)
    return Dataset(
        names=names or category_names,
        train=train,
        val=val,
        source=f"{train_annotations} + {val_annotations}",
        category_ids=category_ids,
    )


def load_coco_folder(root: Path, *, names: tuple[str, ...] | None = None) -> Dataset:
    """COCO's own layout: ``annotations/instances_<split>.json`` with images in
    ``images/<split>/`` (or ``<split>/``), one split named ``train*`` and one ``val*``."""
    root = Path(root)
    folder = root / "annotations"
    if not folder.is_dir():
        raise DataError(f"COCO annotations folder not found: {folder} (expected annotations/instances_<split>.json)")
    found = {}
    for role in ("train", "val"):
        files = sorted(folder.glob(f"instances_{role}*.json"))
        if len(files) != 1:
            raise DataError(
                f"expected one {folder}/instances_{role}*.json for the {role} split, but found "
                f"{len(files)}: {[f.name for f in files]}"
            )
        split = files[0].stem[len("instances_") :]
        images = root / "images" / split
        found[role] = (images if images.is_dir() else root / split, files[0])
    return load_coco_dataset(
        train_images=found["train"][0],
        train_annotations=found["train"][1],
        val_images=found["val"][0],
        val_annotations=found["val"][1],
        names=names,
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise DataError(f"{path} must be a COCO instances file with lists images, annotations, categories")
    return data


def _categories(data: dict, path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    categories = data["categories"]
    if not categories:
        raise DataError(f"{path} has no categories")
    try:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"every category needs an integer id ({path}, categories)") from None
    if len(by_id) != len(categories):
        raise DataError(f"category ids must be unique ({path}, categories)")
    ids = tuple(sorted(by_id))
    return ids, tuple(by_id[i] for i in ids)


def _load_split(name: str, folder: Path, data: dict, path: Path, index_of: dict[int, int]) -> Split:
    if not folder.is_dir():
        raise DataError(f"{name} image folder not found: {folder}")
    images = {}
    for entry in data["images"]:
        try:
            images[int(entry["id"])] = entry
            str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"every image needs an integer id and a file_name ({path}, images)") from None
    if not images:
        raise DataError(f"{name} split has no images ({path}, images)")
    annotations = defaultdict(list)
    for annotation in data["annotations"]:
        annotations[annotation.get("image_id")].append(annotation)
    unknown = set(annotations) - set(images)
    if unknown:
        raise DataError(f"annotations refer to image ids not in images, e.g. {sorted(unknown, key=str)[0]!r} ({path})")
    examples = []
    # Sorted by file name: the same order the YOLO loader gives the same folder.
    for image_id, entry in sorted(images.items(), key=lambda item: str(item[1]["file_name"])):
        image_path = folder / str(entry["file_name"])
        if not image_path.is_file():
            raise DataError(f"image not found: {image_path} ({path}, image id {image_id})")
        width, height = image_size(image_path)
        if (entry.get("width"), entry.get("height")) != (width, height):
            raise DataError(
                f"image {image_path} is {width}x{height} but the annotations say "
                f"{entry.get('width')}x{entry.get('height')} ({path}, image id {image_id})"
            )
        boxes, classes = _boxes(annotations[image_id], width=width, height=height, path=path, index_of=index_of)
        examples.append(Example(image_path, width, height, boxes, classes, image_id))
    return Split(name, tuple(examples))


def _boxes(annotations: list[dict], *, width: int, height: int, path: Path, index_of: dict[int, int]):
    boxes, classes = [], []
    for annotation in annotations:
        where = f"{path}, annotation id {annotation.get('id')}"
        if annotation.get("iscrowd", 0):
            continue
        category_id = annotation.get("category_id")
        if category_id not in index_of:
            raise DataError(
                f"category_id {category_id!r} is not one of the {len(index_of)} categories "
                f"{min(index_of)}..{max(index_of)} ({where})"
            )
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise DataError(f"bbox must be [x, y, w, h] in pixels, but got {bbox!r} ({where})")
        x, y, w, h = (float(v) for v in bbox)
        boxes.append(checked_box(x / width, y / height, (x + w) / width, (y + h) / height, where=where))
        classes.append(index_of[category_id])
    if not boxes:
        return no_boxes()
    return np.asarray(boxes, np.float32), np.asarray(classes, np.int32)
