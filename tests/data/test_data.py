"""Datasets: the generated one (deterministic, cached, atomic), the YOLO and COCO loaders and
their errors, and the preprocessing every stage shares."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.data import (
    SHAPE_NAMES,
    generate_shapes_dataset,
    image_boxes_to_model,
    load_coco_dataset,
    load_coco_folder,
    load_yolo_dataset,
    preprocess,
    split_arrays,
)
from search.data.generated import MANIFEST
from search.errors import DataError, SpaceError

SMALL = {"seed": 3, "num_train": 6, "num_val": 3, "image_size": 96}


def real_root() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "real"


def _needs_coco128() -> Path:
    coco128 = real_root() / "coco128"
    if not coco128.is_dir():
        pytest.skip(f"needs the real coco128 in {coco128} (absent outside the project machine)")
    return coco128


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- generated dataset --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_yaml(tmp_path_factory) -> Path:
    return generate_shapes_dataset(tmp_path_factory.mktemp("gen") / "shapes", **SMALL)


def test_generation_is_deterministic(shapes_yaml, tmp_path):
    again = generate_shapes_dataset(tmp_path / "shapes", **SMALL)
    first, second = _tree(shapes_yaml.parent), _tree(again.parent)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".png")]) == 9
    assert first == second
    other_seed = _tree(generate_shapes_dataset(tmp_path / "other", **{**SMALL, "seed": 4}).parent)
    assert other_seed["images/val/val_00000.png"] != first["images/val/val_00000.png"]


def test_val_images_do_not_depend_on_the_train_count(shapes_yaml, tmp_path):
    more_train = generate_shapes_dataset(tmp_path / "shapes", **{**SMALL, "num_train": 2})
    first, second = _tree(shapes_yaml.parent), _tree(more_train.parent)
    assert {k: v for k, v in first.items() if "/val/" in k} == {k: v for k, v in second.items() if "/val/" in k}


def test_generation_is_cached_and_replaced_when_parameters_change(tmp_path):
    root = tmp_path / "shapes"
    generate_shapes_dataset(root, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    start = time.perf_counter()
    data_yaml = generate_shapes_dataset(root, **SMALL)
    assert time.perf_counter() - start < 0.5
    assert data_yaml == root / "data.yaml"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps

    generate_shapes_dataset(root, **{**SMALL, "num_val": 1})
    assert json.loads((root / MANIFEST).read_text())["images"] == {"train": 6, "val": 1}
    assert len(list((root / "images" / "val").iterdir())) == 1
    # No staging or outdated folders left next to the dataset.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_generation_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and holds no generated dataset"):
        generate_shapes_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_generated_dataset_loads_back(shapes_yaml):
    dataset = load_yolo_dataset(shapes_yaml)
    manifest = json.loads((shapes_yaml.parent / MANIFEST).read_text())
    assert dataset.names == SHAPE_NAMES
    assert (len(dataset.train), len(dataset.val)) == (6, 3)
    assert (dataset.train.num_boxes, dataset.val.num_boxes) == (manifest["boxes"]["train"], manifest["boxes"]["val"])
    sizes = []
    for example in dataset.train.examples + dataset.val.examples:
        assert (example.width, example.height) == (96, 96)
        assert example.boxes.dtype == np.float32 and example.classes.dtype == np.int32
        assert np.all(example.boxes >= 0) and np.all(example.boxes <= 1)
        assert set(example.classes.tolist()) <= {0, 1, 2}
        sizes.extend((example.boxes[:, 2:] - example.boxes[:, :2]).max(axis=1))
    assert 0.04 <= min(sizes) and max(sizes) <= 0.41


def test_generated_boxes_frame_the_shapes(tmp_path):
    # Each shape is one flat colour (plus noise), so inside its box the pixels near the centre
    # differ from the pixels just outside the box; a misplaced box would not show that.
    from search.data.generated import draw_shapes_image

    for seed in range(20):
        image, boxes, _ = draw_shapes_image(np.random.default_rng(seed), image_size=256, max_objects=1)
        (x0, y0, x1, y1) = boxes[0]
        row, col = int((y0 + y1) / 2), int((x0 + x1) / 2)
        centre = image[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3)
        # The rows of pixels just above and below the box belong to the background.
        above, below = image[max(int(y0) - 3, 0), int(x0) : int(x1)], image[min(int(y1) + 2, 255), int(x0) : int(x1)]
        outside = np.concatenate([above, below])
        assert np.abs(centre.mean(0) - outside.mean(0)).sum() > 40, f"seed {seed}: box {boxes[0]}"


# --- YOLO format --------------------------------------------------------------------------------


def _yolo_dataset(root: Path, *, labels: dict[str, str] | None = None, names="[a, b, c]") -> Path:
    """A tiny YOLO dataset: 2 train and 1 val PNGs, labels as given (image stem -> text)."""
    for split, stems in (("train", ["t0", "t1"]), ("val", ["v0"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in stems:
            Image.new("RGB", (40, 30), (10, 20, 30)).save(root / "images" / split / f"{stem}.png")
    for stem, text in (labels or {}).items():
        split = "val" if stem.startswith("v") else "train"
        (root / "labels" / split / f"{stem}.txt").write_text(text)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {names}\n")
    return data_yaml


def test_yolo_loader_reads_boxes_negatives_and_sizes(tmp_path):
    data_yaml = _yolo_dataset(tmp_path, labels={"t0": "2 0.5 0.5 0.5 0.2\n\n0 0.25 0.5 0.5 1.0\n"}, names="{0: a, 1: b, 2: c}")
    dataset = load_yolo_dataset(data_yaml)
    assert dataset.names == ("a", "b", "c") and dataset.source == str(data_yaml)
    first, negative = dataset.train.examples
    assert (first.width, first.height) == (40, 30)
    np.testing.assert_allclose(first.boxes, [[0.25, 0.4, 0.75, 0.6], [0.0, 0.0, 0.5, 1.0]], atol=1e-6)
    assert first.classes.tolist() == [2, 0]
    assert negative.boxes.shape == (0, 4) and negative.classes.shape == (0,)


YOLO_ERRORS = {
    "class out of range": ("3 0.5 0.5 0.1 0.1\n", r"label class 3 is out of range 0\.\.2 \(.*t0\.txt, line 1\)"),
    "box outside": ("0 0.5 0.5 0.1 0.1\n1 0.98 0.5 0.2 0.1\n", r"must lie inside the image.*t0\.txt, line 2\)"),
    "zero width": ("0 0.5 0.5 0 0.1\n", r"must have positive width and height.*t0\.txt, line 1\)"),
    "negative height": ("0 0.5 0.5 0.1 -0.2\n", r"must have positive width and height.*t0\.txt, line 1\)"),
    "four values": ("0 0.5 0.5 0.1\n", r"expected 5 values 'class cx cy w h', but got 4.*t0\.txt, line 1\)"),
    "not a number": ("0 0.5 abc 0.1 0.1\n", r"expected numbers.*t0\.txt, line 1\)"),
    "fractional class": ("1.5 0.5 0.5 0.1 0.1\n", r"label class must be an integer, but got '1\.5'.*line 1\)"),
    "not finite": ("0 nan 0.5 0.1 0.1\n", r"non-finite coordinate.*t0\.txt, line 1\)"),
}


@pytest.mark.parametrize("case", list(YOLO_ERRORS))
def test_yolo_label_errors_name_file_and_line(tmp_path, case):
    text, message = YOLO_ERRORS[case]
    with pytest.raises(DataError, match=message):
        load_yolo_dataset(_yolo_dataset(tmp_path, labels={"t0": text}))


def test_yolo_small_rounding_past_the_border_is_clipped(tmp_path):
    dataset = load_yolo_dataset(_yolo_dataset(tmp_path, labels={"t0": "0 0.952 0.5 0.1 0.1\n"}))
    assert dataset.train.examples[0].boxes[0, 2] == pytest.approx(1.0)


def test_yolo_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*missing\.yaml"):
        load_yolo_dataset(tmp_path / "missing.yaml")

    data_yaml = _yolo_dataset(tmp_path / "no_val_images")
    (tmp_path / "no_val_images" / "images" / "val" / "v0.png").unlink()
    with pytest.raises(DataError, match=r"val image folder .* holds no images .*key val\)"):
        load_yolo_dataset(data_yaml)

    data_yaml = _yolo_dataset(tmp_path / "missing_folder")
    data_yaml.write_text("path: .\ntrain: images/train\nval: images/nowhere\nnames: [a]\n")
    with pytest.raises(DataError, match=r"val image folder not found: .*images/nowhere"):
        load_yolo_dataset(data_yaml)

    data_yaml = _yolo_dataset(tmp_path / "no_labels")
    for label_dir in (tmp_path / "no_labels" / "labels").iterdir():
        label_dir.rmdir()
    (tmp_path / "no_labels" / "labels").rmdir()
    with pytest.raises(DataError, match=r"labels folder not found: .*labels/train"):
        load_yolo_dataset(data_yaml)

    data_yaml = _yolo_dataset(tmp_path / "bad_names", names="{0: a, 2: c}")
    with pytest.raises(DataError, match=r"names as a mapping must have the keys 0\.\.1"):
        load_yolo_dataset(data_yaml)

    data_yaml = _yolo_dataset(tmp_path / "no_names", names="[]")
    with pytest.raises(DataError, match=r"names must be a non-empty list"):
        load_yolo_dataset(data_yaml)

    data_yaml = _yolo_dataset(tmp_path / "broken_image")
    (tmp_path / "broken_image" / "images" / "train" / "t1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read the image header of .*t1\.png"):
        load_yolo_dataset(data_yaml)


# --- COCO format --------------------------------------------------------------------------------


def _coco_files(root: Path, *, annotations: list[dict], width: int = 40) -> dict[str, Path]:
    """One folder of 2 images (40x30) and an instances file with categories 3 and 7."""
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(images / name)
    instances = {
        "images": [{"id": 11, "file_name": "b.png", "width": width, "height": 30}, {"id": 5, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": annotations,
    }
    path = root / "instances.json"
    path.write_text(json.dumps(instances))
    return {"train_images": images, "train_annotations": path, "val_images": images, "val_annotations": path}


def test_coco_loader_maps_categories_boxes_and_skips_crowds(tmp_path):
    annotations = [
        {"id": 1, "image_id": 5, "category_id": 7, "bbox": [4, 3, 20, 15], "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        {"id": 3, "image_id": 5, "category_id": 3, "bbox": [10, 0, 30, 30], "iscrowd": 0},
    ]
    dataset = load_coco_dataset(**_coco_files(tmp_path, annotations=annotations))
    assert dataset.names == ("three", "seven") and dataset.category_ids == (3, 7)
    a, b = dataset.val.examples  # sorted by file name
    assert (a.image_path.name, a.image_id, b.image_path.name, b.image_id) == ("a.png", 5, "b.png", 11)
    np.testing.assert_allclose(a.boxes, [[0.1, 0.1, 0.6, 0.6], [0.25, 0.0, 1.0, 1.0]], atol=1e-6)
    assert a.classes.tolist() == [1, 0]
    assert b.boxes.shape == (0, 4)  # no annotations: a negative
    renamed = load_coco_dataset(**_coco_files(tmp_path / "renamed", annotations=annotations), names=("x", "y"))
    assert renamed.names == ("x", "y")


COCO_ERRORS = {
    "unknown category": ({"category_id": 4, "bbox": [0, 0, 5, 5]}, r"category_id 4 is not one of the 2 categories 3\.\.7 \(.*instances\.json, annotation id 9\)"),
    "box outside": ({"category_id": 3, "bbox": [30, 0, 20, 5]}, r"box \[0\.75, 0, 1\.25, 0\.1667\] .* must lie inside the image, 0\.\.1 give or take .*annotation id 9\)"),
    "zero size": ({"category_id": 3, "bbox": [3, 3, 0, 5]}, r"must have positive width and height.*annotation id 9\)"),
    "malformed bbox": ({"category_id": 3, "bbox": [3, 3, 5]}, r"bbox must be \[x, y, w, h\] in pixels, but got \[3, 3, 5\].*annotation id 9\)"),
}


@pytest.mark.parametrize("case", list(COCO_ERRORS))
def test_coco_annotation_errors(tmp_path, case):
    fields, message = COCO_ERRORS[case]
    annotation = {"id": 9, "image_id": 5, "iscrowd": 0, **fields}
    with pytest.raises(DataError, match=message):
        load_coco_dataset(**_coco_files(tmp_path, annotations=[annotation]))


def test_coco_file_errors(tmp_path):
    files = _coco_files(tmp_path / "size", annotations=[], width=41)
    with pytest.raises(DataError, match=r"b\.png is 40x30 but the annotations say 41x30 \(.*image id 11\)"):
        load_coco_dataset(**files)
    with pytest.raises(DataError, match=r"annotation file not found: .*nothing\.json"):
        load_coco_dataset(**{**files, "val_annotations": tmp_path / "nothing.json"})
    files = _coco_files(tmp_path / "missing", annotations=[])
    (files["train_images"] / "a.png").unlink()
    with pytest.raises(DataError, match=r"image not found: .*a\.png \(.*image id 5\)"):
        load_coco_dataset(**files)


def test_coco_folder_layout(tmp_path):
    annotation = {"id": 1, "image_id": 5, "category_id": 3, "bbox": [4, 3, 20, 15], "iscrowd": 0}
    for split in ("train2017", "val2017"):
        files = _coco_files(tmp_path / split, annotations=[annotation])
        (tmp_path / "images").mkdir(exist_ok=True)
        files["train_images"].rename(tmp_path / "images" / split)
        (tmp_path / "annotations").mkdir(exist_ok=True)
        files["train_annotations"].rename(tmp_path / "annotations" / f"instances_{split}.json")
    dataset = load_coco_folder(tmp_path)
    assert dataset.train.examples[0].image_path == tmp_path / "images" / "train2017" / "a.png"
    assert dataset.val.examples[0].image_path == tmp_path / "images" / "val2017" / "a.png"
    assert dataset.val.num_boxes == 1 and dataset.category_ids == (3, 7)
    (tmp_path / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DataError, match=r"expected one .*instances_val\*\.json for the val split, but found 0"):
        load_coco_folder(tmp_path)


@pytest.mark.slow
@pytest.mark.real
def test_coco128_yolo_and_coco_loaders_agree():
    coco128 = _needs_coco128()
    yolo = load_yolo_dataset(coco128 / "data.yaml")
    images = coco128 / "images" / "train2017"
    annotations = coco128 / "annotations" / "instances_train2017.json"
    coco = load_coco_dataset(train_images=images, train_annotations=annotations, val_images=images, val_annotations=annotations)
    assert yolo.names == coco.names and coco.category_ids[:3] == (1, 2, 3) and coco.category_ids[-1] == 90
    assert len(yolo.train) == len(coco.train) == 128
    # 939 annotations, of which 10 are crowds that both formats leave out.
    assert yolo.train.num_boxes == coco.train.num_boxes == 929
    for a, b in zip(yolo.train.examples, coco.train.examples):
        assert a.image_path == b.image_path and (a.width, a.height) == (b.width, b.height)
        assert sorted(a.classes.tolist()) == sorted(b.classes.tolist())
        # Each YOLO box has a COCO box of its class within the 6 decimals YOLO labels keep.
        for box, label in zip(a.boxes, a.classes):
            same_class = b.boxes[b.classes == label]
            assert np.abs(same_class - box).max(axis=1).min() < 2e-3


# --- preprocessing ------------------------------------------------------------------------------


def test_preprocessed_pixels_land_where_the_boxes_say(tmp_path):
    # A white rectangle on black in a 200x100 image; after preprocessing, the mapped box must
    # frame the white pixels, and letterbox padding must be 0.5 grey.
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:60, 50:150] = 255
    box = np.float32([[50 / 200, 20 / 100, 150 / 200, 60 / 100]])
    for mode in ("stretch", "letterbox"):
        out = preprocess(image, resolution=64, mode=mode)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        x0, y0, x1, y1 = image_boxes_to_model(box, width=200, height=100, resolution=64, mode=mode)[0] * 64
        inside = out[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1]
        assert inside.min() >= 250
        assert out[int(y1) + 2, int(x0) + 2].max() <= 5
    letterboxed = preprocess(image, resolution=64, mode="letterbox")
    assert (letterboxed[:15] == 128).all() and (letterboxed[-15:] == 128).all()


def test_split_arrays_are_memoised_and_read_only(shapes_yaml):
    dataset = load_yolo_dataset(shapes_yaml)
    first = split_arrays(dataset.val, resolution=64, mode="stretch")
    assert first.images.shape == (3, 64, 64, 3) and first.images.dtype == np.uint8
    assert not first.images.flags.writeable
    again = split_arrays(load_yolo_dataset(shapes_yaml).val, resolution=64, mode="stretch")
    assert again.images is first.images
    letterbox = split_arrays(dataset.val, resolution=64, mode="letterbox")
    assert letterbox.images is not first.images
    for example, boxes, classes in zip(dataset.val.examples, first.boxes, first.classes):
        np.testing.assert_allclose(boxes, example.boxes, atol=1e-6)  # square images: stretch keeps them
        assert classes.tolist() == example.classes.tolist()


def test_unknown_preprocessing_suggests_the_closest():
    with pytest.raises(SpaceError, match=r"preprocessing must be one of .* but got 'letterbx'.*did you mean 'letterbox'"):
        preprocess(np.zeros((4, 4, 3), np.uint8), resolution=32, mode="letterbx")


# --- the formats table ------------------------------------------------------------------------


def test_each_format_row_loads_its_format(tmp_path, shapes_yaml):
    from search.data.formats import DATA_FORMATS
    from search.space import DataSpec, GeneratedDataSpec

    generated = DATA_FORMATS["generated"].load(DataSpec(generated=GeneratedDataSpec(**SMALL)), shared_dir=tmp_path)
    assert (len(generated.train.examples), len(generated.val.examples)) == (6, 3)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["shapes-s3-6-3-96"]  # in the shared folder, by its parameters
    yolo = DATA_FORMATS["yolo"].load(DataSpec(format="yolo", path=str(shapes_yaml)), shared_dir=tmp_path)
    assert yolo.names == generated.names == tuple(SHAPE_NAMES)
    with pytest.raises(DataError, match="COCO annotations folder not found"):
        DATA_FORMATS["coco"].load(DataSpec(format="coco", path=str(tmp_path / "nowhere")), shared_dir=tmp_path)
    assert [name for name, row in DATA_FORMATS.items() if row.needs_path] == ["yolo", "coco"]


def test_load_data_refuses_an_unknown_format_by_name(tmp_path):
    from dataclasses import replace

    from search.inputs import load_data
    from search.space import load_space

    space = load_space(Path(__file__).resolve().parents[2] / "spaces" / "smoke.yaml", (f"storage.cache_dir={tmp_path}",))
    # The space parser refuses it first; a Space made another way must not reach some other loader either.
    bad = replace(space, data=replace(space.data, format="cocoo", path=str(tmp_path)))
    with pytest.raises(SpaceError) as caught:
        load_data(bad)
    assert str(caught.value) == ("data.format must be one of the names below, but got 'cocoo'; "
                                 "allowed: generated, yolo, coco; did you mean 'coco'?")
