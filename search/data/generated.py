"""A generated YOLO-format dataset of shapes, so the tool runs (and its tests pass) without COCO.

It is made to be hard in the ways compression hurts: objects from ~5% to ~40% of the side (the
small ones vanish at 64 px), classes told apart only by outline (colours are random), clutter
lines and arcs, smooth colour fields, pixel noise and partial occlusion. Still it is learnable:
the stock detector from scratch, 800 steps of batch 8 at 160 px (``search.train``), reached val
mAP@0.5 0.59 (0.62 at 192 px, 0.09 at 64 px) with the default parameters.

Every image draws from its own ``numpy`` generator seeded by ``(seed, split, index)``, so the
bytes are the same on every run and the val images do not change when ``num_train`` does.
The folder is written under a temporary name and renamed into place, with a manifest holding a
hash of the parameters: a complete dataset with the same parameters is reused at once, and an
interrupted generation never leaves a half dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from search.errors import DataError

# Bump when the drawing changes: cached datasets made by older code are then regenerated.
GENERATOR_VERSION = 2
MANIFEST = "manifest.json"
SHAPE_NAMES = ("circle", "square", "triangle")
SPLIT_SEEDS = {"train": 0, "val": 1}

MIN_SIZE, MAX_SIZE = 0.05, 0.4  # object extent as a fraction of the image side, log-uniform
MAX_COVERED = 0.3  # a later shape may hide at most this fraction of an earlier one's box
SUPERSAMPLE = 2  # shapes are drawn at 2x and reduced: smooth outlines, not staircase edges
MIN_CONTRAST = 120  # L1 distance (0..765) of a shape's colour from the background under it
# Shapes stand roughly upright (squares level, triangles pointing up or down) and tilt a little:
# free rotation multiplies the looks a few hundred training images must cover, and the stock detector
# trained from scratch for 800 steps then overfits instead of learning outlines.
MAX_TILT = math.radians(15)
CORNERS = {"square": 4, "triangle": 3}
UPRIGHT_ANGLE = {"square": math.pi / 4, "triangle": -math.pi / 2}  # first corner; y points down
# Smallest value of each parameter; 32 px is the smallest image a YOLO input of stride 32 needs.
_LOWEST = {"seed": 0, "num_train": 1, "num_val": 1, "image_size": 32, "max_objects": 1}


def generate_shapes_dataset(
    root: Path,
    *,
    seed: int = 0,
    num_train: int = 512,
    num_val: int = 128,
    image_size: int = 256,
    max_objects: int = 6,
) -> Path:
    """Write (or reuse) the shapes dataset in ``root``; returns the path of its ``data.yaml``."""
    parameters = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "max_objects": max_objects,
    }
    for name, value in parameters.items():
        low = _LOWEST[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"generated dataset: {name} must be an integer >= {low}, but got {value!r}")
    digest = _parameters_hash(parameters)
    root = Path(root)
    existing = _manifest_hash(root)
    if existing == digest:
        return root / "data.yaml"
    if existing is None and root.exists() and any(root.iterdir()):
        raise DataError(f"{root} is not empty and holds no generated dataset ({MANIFEST}); refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_dataset(staging, parameters, digest)
        _move_into_place(staging, root, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / "data.yaml"


def _parameters_hash(parameters: dict) -> str:
    text = json.dumps({"version": GENERATOR_VERSION, "parameters": parameters}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest_hash(root: Path) -> str | None:
    try:
        return json.loads((root / MANIFEST).read_text()).get("parameters_hash")
    except (OSError, ValueError, AttributeError):
        return None


def _write_dataset(folder: Path, parameters: dict, digest: str) -> None:
    counts = {"train": parameters["num_train"], "val": parameters["num_val"]}
    num_boxes = {}
    for split, count in counts.items():
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        num_boxes[split] = 0
        for index in range(count):
            rng = np.random.default_rng([parameters["seed"], SPLIT_SEEDS[split], index])
            image, boxes, classes = draw_shapes_image(
                rng, image_size=parameters["image_size"], max_objects=parameters["max_objects"]
            )
            stem = f"{split}_{index:05d}"
            Image.fromarray(image).save(folder / "images" / split / f"{stem}.png", compress_level=1)
            labels = _yolo_lines(boxes, classes, parameters["image_size"])
            (folder / "labels" / split / f"{stem}.txt").write_text(labels)
            num_boxes[split] += len(classes)
    data = {"path": ".", "train": "images/train", "val": "images/val", "names": list(SHAPE_NAMES)}
    (folder / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # Written last: its presence is what marks the dataset complete.
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "parameters": parameters,
        "parameters_hash": digest,
        "images": counts,
        "boxes": num_boxes,
        "names": list(SHAPE_NAMES),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _move_into_place(staging: Path, root: Path, digest: str) -> None:
    """Rename ``staging`` to ``root``, replacing an outdated generated dataset there."""
    if root.exists():
        outdated = Path(tempfile.mkdtemp(prefix=f".{root.name}.outdated-", dir=root.parent))
        os.rename(root, outdated / root.name)
        shutil.rmtree(outdated, ignore_errors=True)
    try:
        os.rename(staging, root)
    except OSError:
        # Another process finished the same dataset first; theirs is as good as ours.
        if _manifest_hash(root) != digest:
            raise


def _yolo_lines(boxes: np.ndarray, classes: np.ndarray, image_size: int) -> str:
    lines = []
    for (x0, y0, x1, y1), c in zip(boxes / image_size, classes):
        lines.append(f"{c} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}\n")
    return "".join(lines)


# --- drawing ------------------------------------------------------------------------------------


def _unit_outline(rng: np.random.Generator, shape: str) -> np.ndarray:
    """Vertices of ``shape`` (radius 1, centred at 0), upright with a random tilt; circles: ``[]``."""
    if shape == "circle":
        return np.zeros((0, 2))
    angle = UPRIGHT_ANGLE[shape] + rng.uniform(-MAX_TILT, MAX_TILT)
    if shape == "triangle" and rng.uniform() < 0.5:
        angle += math.pi  # pointing down
    turns = angle + 2 * math.pi * np.arange(CORNERS[shape]) / CORNERS[shape]
    return np.stack([np.cos(turns), np.sin(turns)], axis=1)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random colour field: no flat colour for the detector to key on."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    base = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, size=3)))
    return Image.blend(base, field, float(rng.uniform(0.3, 1.0)))


def _draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Lines and open arcs: edges and curves that belong to no class."""
    for _ in range(int(rng.integers(2, 9))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, 3)) * SUPERSAMPLE
        if rng.uniform() < 0.6:
            points = [tuple(float(v) for v in rng.uniform(0, size, size=2)) for _ in range(int(rng.integers(2, 4)))]
            draw.line(points, fill=colour, width=width)
        else:
            centre = rng.uniform(0, size, size=2)
            radius = rng.uniform(0.03, 0.2) * size
            start = float(rng.uniform(0, 360))
            box = [float(v) for v in (*(centre - radius), *(centre + radius))]
            draw.arc(box, start, start + float(rng.uniform(40, 160)), fill=colour, width=width)


def _place(rng: np.random.Generator, extent: np.ndarray, size: int, placed: list[np.ndarray]) -> np.ndarray | None:
    """A pixel xyxy box of ``extent``, placed so it hides no ``placed`` box too much, or None."""
    for _ in range(30):
        corner = rng.uniform(0, size - extent)
        box = np.concatenate([corner, corner + extent])
        if all(_covered_fraction(other, box) <= MAX_COVERED for other in placed):
            return box
    return None


def _covered_fraction(box: np.ndarray, cover: np.ndarray) -> float:
    width = min(box[2], cover[2]) - max(box[0], cover[0])
    height = min(box[3], cover[3]) - max(box[1], cover[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / ((box[2] - box[0]) * (box[3] - box[1]))


def _shape_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from ``under``: the mean of what the shape will cover."""
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - under).sum() >= MIN_CONTRAST:
            break
    return tuple(int(v) for v in colour)


def draw_shapes_image(rng: np.random.Generator, *, image_size: int, max_objects: int):
    """One image: uint8 ``(S, S, 3)``, boxes ``(K, 4)`` xyxy in pixels, classes ``(K,)`` int32."""
    big = image_size * SUPERSAMPLE
    canvas = _background(rng, big)
    draw = ImageDraw.Draw(canvas)
    _draw_clutter(rng, draw, big)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_index = int(rng.integers(len(SHAPE_NAMES)))
        shape = SHAPE_NAMES[class_index]
        side = math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))) * big
        outline = _unit_outline(rng, shape)
        if len(outline):
            # Scale so the longer side of the shape's box is `side`, with that box's corner at 0.
            low, high = outline.min(axis=0), outline.max(axis=0)
            scale = side / (high - low).max()
            outline, extent = (outline - low) * scale, (high - low) * scale
        else:
            extent = np.array([side, side])
        box = _place(rng, extent, big, boxes)
        if box is None:
            continue
        under = np.asarray(canvas.crop(tuple(int(v) for v in box)), np.float32).reshape(-1, 3).mean(axis=0)
        colour = _shape_colour(rng, under)
        if shape == "circle":
            draw.ellipse([float(v) for v in box], fill=colour)
        else:
            draw.polygon([tuple(float(v) for v in p) for p in outline + box[:2]], fill=colour)
        boxes.append(box)
        classes.append(class_index)
    image = np.asarray(canvas.reduce(SUPERSAMPLE), np.float32)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    image = np.clip(image, 0, 255).astype(np.uint8)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / SUPERSAMPLE
    return image, boxes.astype(np.float32), np.asarray(classes, np.int32)
