"""Step 2: prune (or not) while fine-tuning on the training split, cached by content.

The result depends only on the base weights, the network, the data, the preprocessing, the
resolution, the pruning spec, the fine-tune settings (with the distillation weight) and the seed;
quantization acts later. So ``stage_key`` hashes exactly those, and every trial that differs only
in how it is converted reuses the stage (``search.stage_cache``), on any node. The stage stores
the architecture with the weights, since a pruned network may be thinner than the one the trial
built (the ``filters`` structure removes filters: the cached architecture is the thinner cfg);
only a miss needs the base weights and the preprocessed training split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from search.params import TrialParams


@dataclass(frozen=True)
class FineTuned:
    model: object  # the stripped, fine-tuned Keras model
    sparsity: float  # measured when the stage was computed: zeros, or for filter pruning filters removed
    prunes: bool  # whether the weights hold pruning's zeros (QAT then preserves them); False for filters
    cache: str  # "hit" (reused) or "miss" (computed by this trial)
    wait_s: float  # time spent waiting for another trial computing the same stage
    key: str
    removed_filters: bool = False  # a thinner network: its sparsity is the filters it lost, which QAT keeps


def pruning_spec(params: TrialParams):
    from search.pruning import PruningSpec

    return PruningSpec(schedule=params.pruning_schedule, target_sparsity=params.target_sparsity or 0.0,
                       structure=params.pruning_structure or "unstructured")


def stage_key(params: TrialParams, context, *, pruning, architecture: dict) -> str:
    """The content address of the stage: a hash of everything it depends on, nothing after it."""
    from search.files import file_sha256
    from search.inputs import dataset_fingerprint
    from search.stage_cache import STAGE_VERSION
    from search.storage import local_copy

    space = context.space
    fine_tune = {"steps": space.fine_tune.steps, "batch_size": space.fine_tune.batch_size,
                 "learning_rate": space.fine_tune.learning_rate}
    if space.fine_tune.distill_weight:  # only when on: a plain fine-tune keeps the key its cached stages have
        fine_tune["distill_weight"] = space.fine_tune.distill_weight
    material = {
        "version": STAGE_VERSION,
        "base": context.base_weights_sha256 or file_sha256(local_copy(context.base_weights)),
        "architecture": architecture, "data": dataset_fingerprint(context.dataset),
        "preprocessing": space.data.preprocessing, "resolution": params.resolution, "pruning": asdict(pruning),
        "fine_tune": fine_tune,
        "seed": space.budget.seed,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def fine_tune(model, params: TrialParams, context, *, family) -> FineTuned:
    """The stage for ``params``: from the cache, or computed here from the base weights."""
    from search.stage_cache import cached_stage

    pruning = pruning_spec(params)
    key = stage_key(params, context, pruning=pruning, architecture=family.architecture(model))

    def compute(weights_path: Path) -> dict:
        from search.data.preprocess import split_arrays
        from search.prune import prune_and_fine_tune
        from search.storage import local_copy

        space, data = context.space, context.dataset
        train = split_arrays(data.train, resolution=params.resolution, mode=space.data.preprocessing)
        model.load_weights(str(local_copy(context.base_weights)))
        tuned, sparsity = prune_and_fine_tune(
            model, pruning, dense_layers=family.dense_layers(model),
            steps=space.fine_tune.steps, batch_size=space.fine_tune.batch_size,
            learning_rate=space.fine_tune.learning_rate, seed=space.budget.seed, heads=family.heads(data.num_classes),
            images=train.images, boxes=train.boxes, classes=train.classes, family=family,
            distill_weight=space.fine_tune.distill_weight,  # the teacher: `model`, the base weights just loaded
        )
        tuned.save_weights(str(weights_path))
        made = {"sparsity": sparsity, "architecture": family.architecture(tuned)}
        if pruning.removes_filters:  # the card records each conv's width asked and kept (the rounding to 8)
            from search.prune_filters import filter_widths

            made["filter_widths"] = filter_widths(model, tuned, target=pruning.sparsity,
                                                  dense_layers=family.dense_layers(model))
        return made

    stage = cached_stage(context.stages_dir, key, compute)
    tuned = load_stage_model(stage, family=family, resolution=params.resolution)
    return FineTuned(tuned, stage.sparsity, pruning.prunes and not pruning.removes_filters, "hit" if stage.hit else "miss",
                     stage.wait_s, key, removed_filters=pruning.removes_filters)


def load_stage_model(stage, *, family, resolution: int):
    """The network a cached stage holds, rebuilt from its architecture, with its weights."""
    model = family.from_architecture(stage.architecture, resolution=resolution)
    model.load_weights(str(stage.weights))
    return model
