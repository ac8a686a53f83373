"""What a search starts from: the dataset and the base model's weights.

Both are prepared once, in the driver, before Ray starts: ``load_data`` reads (or generates) the
dataset and checks it against the space; ``base_model`` trains a base model on it, or imports the
user's Darknet weights, and caches the Keras weights under a hash of everything they depend on, so
a second run starts searching at once.

With ``model.weights`` given there is no base training: the weights are the base model as they
are, and of ``base_training`` only ``resolution`` is used, as the size at which the imported
model's float Keras mAP (the reference every trial is compared with) is measured.
``check_model_files`` checks the cfg and weights from their text, header and size alone, in
milliseconds, so a wrong file fails before any data is read or anything is created.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from search.data.dataset import Dataset, Split
from search.data.formats import DATA_FORMATS
from search.errors import DataError, SpaceError
from search.files import file_sha256, temp_path_beside, write_text_atomic
from search.models import family_of
from search.space import Space
from search.spec import choose

# Bump when the training code changes what a cached base model would be.
BASE_MODEL_VERSION = 2  # 2: the model family is part of the key


def check_model_files(space: Space) -> int | None:
    """The class count of the space's Darknet cfg after checking cfg and weights; ``None`` without weights.

    A cfg without weights is checked too (it is the network the base model is trained as, at the
    data's class count: its ``classes`` and head ``filters`` are rewritten, so they need not agree).
    Raises ``SpaceError`` for weights without a cfg, and ``WeightsError`` (one line) for a missing
    file, a cfg section or key the builder does not build, a header that is not Darknet's, or a
    weights file of another size than the cfg needs. No model is built: this runs before anything else.
    """
    weights, cfg = space.model.weights, space.model.cfg
    if not weights and not cfg:
        return None
    if not cfg:
        raise SpaceError(f"{space.path}: model.cfg: is required with model.weights (the Darknet .cfg of {weights}), but got nothing")
    family = family_of(space.model)  # reads and checks the cfg
    return family.check_files(Path(cfg), Path(weights)) if weights else None


def load_data(space: Space) -> Dataset:
    """The dataset the space names, checked against the space; raises ``DataError``/``SpaceError``/``WeightsError``.

    The model files are checked first: they fail in milliseconds, reading the data can take minutes.
    """
    cfg_classes = check_model_files(space)
    spec = space.data
    data_format = choose(DATA_FORMATS, spec.format, what="data.format")
    dataset = data_format.load(spec, shared_dir=Path(space.shared_dir))
    if spec.val_limit is not None:
        dataset = replace(dataset, val=Split(dataset.val.name, dataset.val.examples[: spec.val_limit]))
    check_against_space(dataset, space, cfg_classes=cfg_classes)
    return dataset


def check_against_space(dataset: Dataset, space: Space, *, cfg_classes: int | None = None) -> None:
    """What only the data can tell: enough training images to calibrate with, and as many classes as the cfg."""
    if cfg_classes is not None and cfg_classes != dataset.num_classes:
        raise DataError(
            f"{space.model.cfg}: the cfg has classes={cfg_classes} but the data ({dataset.source}) has "
            f"{dataset.num_classes} names; they must agree (model.cfg, data.path)"
        )
    from search.pruning import MIN_PRUNING_STEPS

    if set(space.search.pruning_schedule.values) != {"none"} and space.fine_tune.steps < MIN_PRUNING_STEPS:
        # Not a trial's failure but the space's: every pruned trial would fail the same way.
        raise SpaceError(
            f"{space.path}: fine_tune.steps: must be >= {MIN_PRUNING_STEPS} when search.pruning.schedule can "
            f"prune (the mask ramps up over the fine-tune, then the model recovers), but got {space.fine_tune.steps}"
        )
    calibration = space.search.calibration_size
    largest = max(calibration.values) if calibration.kind != "float" else calibration.high
    n_train = len(dataset.train.examples)
    if largest > n_train:
        raise SpaceError(
            f"{space.path}: search.calibration_size: must be <= the {n_train} training images in "
            f"{dataset.source}, but got {largest}"
        )


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the labels, image names and sizes of both splits (pixels are not read)."""
    digest = hashlib.sha256(json.dumps(dataset.names).encode())
    for split in (dataset.train, dataset.val):
        for ex in split.examples:
            path = Path(ex.image_path)
            digest.update(f"{split.name}/{path.name}:{ex.width}x{ex.height}:{path.stat().st_size}".encode())
            digest.update(ex.boxes.tobytes())
            digest.update(ex.classes.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class BaseModel:
    weights: str  # Keras weights file (.h5), loadable at any resolution
    key: str  # the cache key: what the weights depend on, hashed
    source: str  # "trained" or "darknet:<path>"
    cached: bool  # found in the cache rather than made by this run
    seconds: float  # time to train/import it (0 when cached)
    map50: float | None  # of the float Keras model on the val split at its resolution
    map: float | None
    resolution: int


def base_model(space: Space, dataset: Dataset, *, progress: bool = True) -> BaseModel:
    """Cached base weights for ``space`` on ``dataset``: trained from scratch or imported."""
    resolution = space.base_training.resolution
    if space.model.weights:
        # Nothing is trained; only the resolution of the reference mAP comes from base_training.
        origin = {"darknet_weights": file_sha256(space.model.weights), "cfg": file_sha256(space.model.cfg),
                  "resolution": resolution}
    else:
        origin = {"training": asdict(space.base_training), "seed": space.budget.seed,
                  **({"cfg": file_sha256(space.model.cfg)} if space.model.cfg else {})}
    key_material = {
        "version": BASE_MODEL_VERSION, "model": space.model.name, "classes": list(dataset.names),
        "data": dataset_fingerprint(dataset), "preprocessing": space.data.preprocessing, **origin,
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(space.shared_dir) / "base"  # every node loads it when it fine-tunes
    weights, card = folder / f"{key}.h5", folder / f"{key}.json"
    if weights.exists() and card.exists():
        info = json.loads(card.read_text())
        return BaseModel(str(weights.resolve()), key, info["source"], True, 0.0, info.get("map50"), info.get("map"), info["resolution"])

    start = time.perf_counter()
    if space.model.weights:
        model, source = _import_darknet(space, dataset, resolution), f"darknet:{space.model.weights}"
    else:
        model, source = _train_from_scratch(space, dataset, resolution, progress=progress), "trained"
    seconds = time.perf_counter() - start
    accuracy = _keras_accuracy(model, space, dataset, resolution)

    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(weights)  # keeps ".h5": Keras picks the format by the suffix
    model.save_weights(str(tmp))
    os.replace(tmp, weights)  # atomic: a killed run never leaves half a weights file under the key
    info = {"source": source, "resolution": resolution, "seconds": round(seconds, 1), **accuracy, "key_material": key_material}
    write_text_atomic(card, json.dumps(info, indent=2))
    return BaseModel(str(weights.resolve()), key, source, False, seconds, accuracy.get("map50"), accuracy.get("map"), resolution)


def _train_from_scratch(space: Space, dataset: Dataset, resolution: int, *, progress: bool):
    from search.data.preprocess import split_arrays
    from search.train import train

    spec = space.base_training
    family = family_of(space.model)
    arrays = split_arrays(dataset.train, resolution=resolution, mode=space.data.preprocessing)
    from search.compat import keras

    keras.utils.set_random_seed(space.budget.seed)  # the initial weights too: the same space trains the same base model
    model = family.build(num_classes=dataset.num_classes, resolution=resolution)
    train(
        model, heads=family.heads(dataset.num_classes), images=arrays.images, boxes=arrays.boxes, classes=arrays.classes,
        steps=spec.steps, batch_size=spec.batch_size, learning_rate=spec.learning_rate, seed=space.budget.seed,
        progress="base model" if progress else None,
    )
    return model


def _import_darknet(space: Space, dataset: Dataset, resolution: int):
    family = family_of(space.model)
    model, num_classes = family.load_pretrained(space.model.cfg, space.model.weights, resolution=resolution)
    if num_classes != dataset.num_classes:
        raise DataError(
            f"{space.model.cfg}: the cfg has {num_classes} classes but the data ({dataset.source}) has "
            f"{dataset.num_classes}; they must agree"
        )
    return model


def _keras_accuracy(model, space: Space, dataset: Dataset, resolution: int) -> dict[str, float]:
    from search.objectives.accuracy import measure_accuracy

    def predict(image):
        return [head[0].numpy() for head in model(image[None], training=False)]

    m = space.measure
    return measure_accuracy(
        predict, dataset.val, heads=family_of(space.model).heads(dataset.num_classes), resolution=resolution,
        preprocessing=space.data.preprocessing, score_threshold=m.score_threshold,
        iou_threshold=m.iou_threshold, max_detections=m.max_detections,
    )
