"""The dataset formats a space may name (``data.format``): one table, read by the validator and ``load_data``.

Each row says whether the format needs ``data.path`` and how to load it, so an unknown format is
refused by name instead of reaching some other format's loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.data.coco_format import load_coco_folder
from search.data.dataset import Dataset
from search.data.generated import generate_shapes_dataset
from search.data.yolo_format import load_yolo_dataset

if TYPE_CHECKING:
    from search.space import DataSpec


@dataclass(frozen=True)
class DataFormat:
    """One row of ``DATA_FORMATS``."""

    description: str
    needs_path: bool  # whether data.path must name the dataset
    load: Callable[..., Dataset]  # (spec: DataSpec, *, shared_dir: Path) -> Dataset


def _generated(spec: DataSpec, *, shared_dir: Path) -> Dataset:
    # In the shared folder, named by its parameters: every node and every later run reuses it.
    g = spec.generated
    data_yaml = generate_shapes_dataset(
        shared_dir / "data" / f"shapes-s{g.seed}-{g.num_train}-{g.num_val}-{g.image_size}",
        seed=g.seed, num_train=g.num_train, num_val=g.num_val, image_size=g.image_size,
    )
    return load_yolo_dataset(data_yaml)


def _yolo(spec: DataSpec, *, shared_dir: Path) -> Dataset:
    return load_yolo_dataset(Path(spec.path))


def _coco(spec: DataSpec, *, shared_dir: Path) -> Dataset:
    return load_coco_folder(Path(spec.path))


DATA_FORMATS: dict[str, DataFormat] = {
    "generated": DataFormat("synthetic shapes on clutter, made from data.generated (seeded)", needs_path=False, load=_generated),
    "yolo": DataFormat("a YOLO data.yaml with images/ and labels/ folders (data.path: the data.yaml)", needs_path=True, load=_yolo),
    "coco": DataFormat("a folder with images/ and annotations/instances_*.json (data.path: the folder)", needs_path=True, load=_coco),
}
