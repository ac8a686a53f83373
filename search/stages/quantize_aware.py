"""Step 2b: quantization-aware fine-tuning, for the modes that convert a QAT model (``needs_qat``).

With ``fine_tune.distill_weight > 0`` it distils from the unpruned base model, as step 2 does."""

from __future__ import annotations

from search.params import TrialParams


def quantize_aware(model, params: TrialParams, context, *, family, preserve_sparsity: bool):
    """``model`` fine-tuned again with fake quantization (keeping its zeros when it was pruned);
    returns the QAT model and the sparsity it then has."""
    from search.data.preprocess import split_arrays
    from search.qat import qat_sparsity, quantize_aware_fine_tune  # imports TFMOT's QAT (seconds)
    from search.train import Distillation

    space, data = context.space, context.dataset
    weight = space.fine_tune.distill_weight
    distill = Distillation(_teacher(params, context, family=family), weight) if weight else None
    train = split_arrays(data.train, resolution=params.resolution, mode=space.data.preprocessing)
    qat_model = quantize_aware_fine_tune(
        model, split_layers=family.channel_split_layers(model), preserve_sparsity=preserve_sparsity,
        steps=space.fine_tune.steps, batch_size=space.fine_tune.batch_size, seed=space.budget.seed,
        heads=family.heads(data.num_classes), images=train.images, boxes=train.boxes, classes=train.classes,
        distill=distill,
    )
    return qat_model, qat_sparsity(qat_model, dense_layers=family.dense_layers(model))


def _teacher(params: TrialParams, context, *, family):
    """The unpruned float base model at the trial's resolution: what a distilling QAT fine-tune
    pulls the quantized (and maybe pruned) student toward, as the pruning fine-tune did."""
    from search.storage import local_copy

    # family.build, not the build stage: that clears the Keras session, which the student lives in
    teacher = family.build(num_classes=context.dataset.num_classes, resolution=params.resolution)
    teacher.load_weights(str(local_copy(context.base_weights)))
    return teacher
