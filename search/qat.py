"""Quantization-aware fine-tuning (TFMOT ``quantize_apply``) for the ``qat_int8`` mode.

``quantize_aware_fine_tune`` takes the float (possibly pruned and stripped) detector and returns a
QAT model: every layer TFMOT's default 8-bit scheme knows wraps its weights and outputs in fake
quantization, and the model is fine-tuned through the same loop as pruning (``search.train``), so
it learns weights that survive int8. ``convert(qat_model, mode="qat_int8")`` then turns the fake
quantization into a full-integer flatbuffer without calibration images.

Three things TFMOT 0.8.1 needs from this model:

- The CSP split is a ``keras.layers.Lambda`` that ``quantize_model`` refuses and that TFMOT's
  model transformer cannot even re-create (it deserialises layers, and Keras refuses a Python
  lambda in safe mode). The QAT clone replaces each layer the model's family names as a split
  (``ModelFamily.channel_split_layers``) by ``SecondHalfChannels``, a registered layer computing
  the same slice, annotated with no quantizers (``NoQuantizeConfig``): a slice moves int8 values
  without changing their scale, so it needs no quantizer of its own (it converts to an int8
  STRIDED_SLICE). Any other Lambda is refused. The float model, and so Darknet loading and the
  OpenCV parity, are untouched.
- Conv2D + BatchNormalization + LeakyReLU: the default scheme's ``Conv2DBatchNormQuantize``
  transform drops the fake quantization between the conv and its BN (the converter folds BN into
  the conv) and LeakyReLU is in its registry with an output quantizer, so the converted model is
  CONV_2D + LEAKY_RELU, both int8.
- Activation ranges start at TFMOT's [-6, 6] and move by an EMA with decay 0.999, i.e. barely in
  a fine-tune of a few hundred steps. They are initialised instead from the float model's
  activations on training images (what int8 calibration would use), and training refines them.

With ``preserve_sparsity`` the scheme is TFMOT's prune-preserving QAT
(``Default8BitPrunePreserveQuantizeScheme``): the weight quantizers multiply each kernel by its
zero mask, so the fine-tune cannot grow back the weights pruning removed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from search.compat import keras, tfmot
from search.models.family import YoloHeads
from search.prune import copy_weights, is_pruned_layer
from search.train import Distillation, train

__all__ = ["SecondHalfChannels", "NoQuantizeConfig", "qat_sparsity", "quantize_aware_model", "quantize_aware_fine_tune", "QAT_LEARNING_RATE"]

# Half the pruning fine-tune's rate: QAT starts from a trained model and only has to adapt the
# weights to rounding; larger steps mostly undo the training.
QAT_LEARNING_RATE = 1e-4
RANGE_IMAGES = 32  # training images whose float activations set the initial quantization ranges
_RANGE_BATCH = 8


@keras.utils.register_keras_serializable(package="search")
class SecondHalfChannels(keras.layers.Layer):
    """Darknet's ``[route] groups=2 group_id=1`` as a serialisable layer (the float model's Lambda)."""

    def call(self, inputs):
        return inputs[..., inputs.shape[-1] // 2 :]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


@keras.utils.register_keras_serializable(package="search")
class NoQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """No quantizer at all: for layers that only move values (the channel split)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def _check_splits(model: keras.Model, split_layers: Collection[str]) -> None:
    """Each named split must be a layer of ``model`` whose output is its input's second half of channels."""
    layers = {layer.name: layer for layer in model.layers}
    for name in sorted(split_layers):
        layer = layers.get(name)
        if layer is None:
            raise ValueError(f"split_layers must name layers of model {model.name!r}, but {name!r} is not in it.")
        halved = (*layer.input_shape[:-1], layer.input_shape[-1] // 2) if layer.input_shape[-1] else None
        if tuple(layer.output_shape) != halved:
            raise ValueError(
                f"a channel split must halve the channels, but layer {name!r} maps {layer.input_shape} to {layer.output_shape}."
            )


def _annotated_clone(model: keras.Model, *, split_layers: Collection[str]) -> keras.Model:
    """A clone with every layer annotated for quantization and each channel split made serialisable."""
    _check_splits(model, split_layers)

    def clone_layer(layer):
        if layer.name in split_layers:
            # Annotated with no quantizers: the prune-preserving scheme insists every layer has a config.
            return tfmot.quantization.keras.quantize_annotate_layer(
                SecondHalfChannels(name=layer.name), quantize_config=NoQuantizeConfig()
            )
        if isinstance(layer, keras.layers.Lambda):
            raise ValueError(
                f"QAT supports the channel split Lambda only ({', '.join(sorted(split_layers))}), but layer "
                f"{layer.name!r} is another Lambda."
            )
        fresh = layer.__class__.from_config(layer.get_config())
        return tfmot.quantization.keras.quantize_annotate_layer(fresh)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    copy_weights(model, clone)
    return clone


def _float_ranges(model: keras.Model, images: np.ndarray) -> dict[str, tuple[float, float]]:
    """``layer name -> (min, max)`` of each layer's output over ``images``, 0 always inside (as TFLite wants)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.input, [layer.output for layer in layers])
    low = {layer.name: 0.0 for layer in layers}
    high = dict(low)
    for start in range(0, len(images), _RANGE_BATCH):
        outputs = probe(images[start : start + _RANGE_BATCH], training=False)
        for layer, output in zip(layers, outputs):
            low[layer.name] = min(low[layer.name], float(np.min(output)))
            high[layer.name] = max(high[layer.name], float(np.max(output)))
    return {name: (low[name], high[name]) for name in low}


def _initialise_ranges(qat_model: keras.Model, ranges: dict[str, tuple[float, float]]) -> int:
    """Set every output quantizer's min / max to its float layer's range; returns how many were set."""
    count = 0
    for layer in qat_model.layers:
        # TFMOT does not export QuantizeLayer (the fake quantization of the model's input).
        if type(layer).__name__ == "QuantizeLayer":
            name_range = (0.0, 1.0)  # the model's input: images in [0, 1]
        elif isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2) and layer.layer.name in ranges:
            name_range = ranges[layer.layer.name]
        else:
            continue
        for weight in layer.weights:
            suffix = weight.name.split("/")[-1].split(":")[0]
            # "output_*": a layer's output quantizer; "post_activation_*": a conv's or dense
            # layer's quantized activation (linear here: the heads); "<name>_*": the input's.
            if suffix in ("output_min", "post_activation_min", f"{layer.name}_min"):
                weight.assign(name_range[0])
                count += 1
            elif suffix in ("output_max", "post_activation_max", f"{layer.name}_max"):
                weight.assign(name_range[1])
                count += 1
    return count // 2


def quantize_aware_model(
    model: keras.Model, *, split_layers: Collection[str], preserve_sparsity: bool, range_images: np.ndarray
) -> keras.Model:
    """A QAT clone of ``model`` (fake quantization on weights and outputs), ranges set on ``range_images``.

    ``model`` is not touched. ``split_layers``: its channel-split Lambdas (the family's
    ``channel_split_layers(model)``). ``range_images``: float32 ``(n, r, r, 3)`` in ``[0, 1]``.
    With ``preserve_sparsity`` the weight quantizers keep the kernels' zeros (prune-preserving QAT).
    """
    quantize = tfmot.quantization.keras
    scheme = (
        tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        if preserve_sparsity
        else quantize.default_8bit.Default8BitQuantizeScheme()
    )
    with quantize.quantize_scope({"SecondHalfChannels": SecondHalfChannels, "NoQuantizeConfig": NoQuantizeConfig}):
        qat_model = quantize.quantize_apply(_annotated_clone(model, split_layers=split_layers), scheme)
    if _initialise_ranges(qat_model, _float_ranges(model, range_images)) == 0:
        raise RuntimeError("QAT model has no activation quantizers to initialise; TFMOT's naming changed?")
    return qat_model


def quantize_aware_fine_tune(
    model: keras.Model,
    *,
    heads: YoloHeads,
    split_layers: Collection[str],
    preserve_sparsity: bool,
    steps: int,
    images: np.ndarray,
    boxes: Sequence,
    classes: Sequence,
    batch_size: int = 8,
    learning_rate: float = QAT_LEARNING_RATE,
    seed: int = 0,
    progress: str | None = None,
    distill: Distillation | None = None,
) -> keras.Model:
    """Make a QAT clone of ``model`` and fine-tune it ``steps`` steps; ready for ``convert(..., mode="qat_int8")``.

    ``heads`` and ``split_layers`` come from the model's family (``heads(num_classes)``,
    ``channel_split_layers(model)``). ``images`` are the uint8 training images (as
    ``search.train.train`` takes them); the first ``RANGE_IMAGES`` of a seeded draw set the
    initial activation ranges. Use ``preserve_sparsity=True`` on a pruned model, or the fine-tune
    fills its zeros back in. ``distill``: as ``search.train.train`` takes it (the unpruned float base
    model as the teacher, for a fine-tune that distils).
    """
    picked = np.random.default_rng(seed).choice(len(images), size=min(RANGE_IMAGES, len(images)), replace=False)
    range_images = images[np.sort(picked)].astype(np.float32) / 255.0
    qat_model = quantize_aware_model(
        model, split_layers=split_layers, preserve_sparsity=preserve_sparsity, range_images=range_images
    )
    train(qat_model, heads=heads, images=images, boxes=boxes, classes=classes, steps=steps, batch_size=batch_size,
          learning_rate=learning_rate, seed=seed, progress=progress, distill=distill)
    return qat_model


def qat_sparsity(qat_model: keras.Model, *, dense_layers: Sequence[str]) -> float:
    """``search.prune.measured_sparsity`` for a QAT model: zeros in the float kernels the wrappers quantize.

    ``dense_layers`` as for pruning (the family's ``dense_layers(model)``): the convs not counted.
    (A QAT wrapper replaces its conv's ``kernel`` attribute by the fake-quantized tensor, so the
    variable is read from the wrapper's weights.)
    """
    zeros = total = 0
    for layer in qat_model.layers:
        wrapped = isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)
        if wrapped and is_pruned_layer(layer.layer, dense_layers=dense_layers):
            (kernel,) = [w for w in layer.weights if w.name == f"{layer.layer.name}/kernel:0"]
            values = kernel.numpy()
            zeros += int(np.count_nonzero(values == 0.0))
            total += values.size
    if total == 0:
        raise ValueError(f"model {qat_model.name!r} has no QAT-wrapped prunable Conv2D layers.")
    return zeros / total
