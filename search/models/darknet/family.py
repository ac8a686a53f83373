"""A ``ModelFamily`` made from a Darknet cfg: the network is what the cfg says.

``darknet_family(template, ...)`` fills every field of the family contract from one cfg, its
*template*: ``build`` is the template at the data's class count (``classes`` of each ``[yolo]``
and ``filters`` of the conv before it rewritten) and the trial's resolution; ``heads``, the
convs that stay dense and the channel splits are read from its ``[yolo]`` and ``[route]``
sections; ``architecture`` is the cfg text that rebuilds a model (its widths read from the model,
so a thinner network is just another cfg); ``filter_clusters``, ``channel_readers`` and ``thin`` are filter pruning's
seam (``search.models.darknet.filters``); ``darknet_files`` writes a model back as cfg +
weights. ``with_cfg(path)`` gives the same family made from another cfg file.

TensorFlow-free at import; ``build`` and ``from_architecture`` import the builder when called.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from search.models.darknet.cfg import Cfg, parse_cfg, parse_cfg_text
from search.models.darknet.network import Conv, Network, Yolo, read_network, with_classes
from search.models.family import ModelFamily

ARCHITECTURE_SOURCE = "the architecture's cfg"


def model_name(cfg_path) -> str:
    """The Keras model's name for a cfg file: its stem as an identifier (``yolov4-tiny-3l`` -> ``yolov4_tiny_3l``)."""
    name = re.sub(r"[^0-9a-z_]", "_", Path(cfg_path).stem.lower())
    return name if name[:1].isalpha() else f"net_{name}"


def model_cfg(model, template: Cfg) -> Cfg:
    """The cfg that rebuilds ``model``: ``template`` with the model's filters, class count and input size.

    Raises ``ValueError`` when the model's convolutions are not the template's layers.
    """
    from search.models.darknet.weights import _filters, conv_layer_indices, model_float_count

    network = read_network(template)
    convs = [layer.index for layer in network.of(Conv)]
    if conv_layer_indices(model) != convs:
        raise ValueError(f"model {model.name!r} must have a conv_<i> for each [convolutional] of {template.source} "
                         f"({len(convs)} of them), but has {conv_layer_indices(model)}.")
    cfg = template
    for index in convs:
        cfg = cfg.with_layer(index, filters=_filters(model.get_layer(f"conv_{index}")))
    for yolo in network.of(Yolo):
        head = _filters(model.get_layer(f"conv_{yolo.inputs[0]}"))
        cfg = cfg.with_layer(yolo.index, classes=head // len(yolo.op.mask) - 5)
    if model.input_shape[1]:
        cfg = cfg.with_net(width=model.input_shape[1], height=model.input_shape[2])
    rebuilt = read_network(cfg)  # the widths must still fit together (routes, groups, shortcuts)
    if rebuilt.float_count != model_float_count(model):
        raise ValueError(f"model {model.name!r} has {model_float_count(model):,} Darknet weights, but the cfg its "
                         f"widths give has {rebuilt.float_count:,}: its layers are not {template.source}'s.")
    return cfg


def _checked_architecture(family_name: str, architecture: Mapping[str, Any]) -> Network:
    if architecture.get("family") != family_name:
        raise ValueError(f"architecture family must be {family_name!r}, but got {architecture.get('family')!r}.")
    network = read_network(parse_cfg_text(str(architecture.get("cfg", "")), source=ARCHITECTURE_SOURCE))
    if network.num_classes != architecture.get("num_classes"):
        raise ValueError(f"architecture num_classes must be its cfg's {network.num_classes}, "
                         f"but got {architecture.get('num_classes')!r}.")
    return network


def _check_files(cfg_path, weights_path) -> int:
    """The cfg's class count, after checking it builds and that the weights file has its exact size."""
    from search.models.darknet.weights import check_weights_file

    network = read_network(parse_cfg(cfg_path))
    check_weights_file(weights_path, network=network, label=Path(cfg_path).name)
    return network.num_classes


def _load_pretrained(cfg_path, weights_path, *, resolution: int | None):
    """``(model, num_classes)``: the cfg built at ``resolution`` with the weights file's values."""
    from search.models.darknet.builder import build_model
    from search.models.darknet.weights import load_darknet_weights

    network = read_network(parse_cfg(cfg_path))
    model = build_model(network, resolution=resolution, name=model_name(cfg_path))
    load_darknet_weights(model, weights_path, network=network, label=Path(cfg_path).name)
    return model, network.num_classes


def darknet_family(template: Cfg, *, name: str, display_name: str, description: str, keras_name: str) -> ModelFamily:
    """The family ``name`` whose networks are ``template`` at any class count (see the module doc)."""
    read_network(template)  # a template that does not build fails here, once

    @lru_cache(maxsize=8)
    def network(num_classes: int) -> Network:
        return read_network(with_classes(template, num_classes))

    def build(*, num_classes: int, resolution: int | None):
        from search.models.darknet.builder import build_model

        return build_model(network(num_classes), resolution=resolution, name=keras_name)

    def architecture(model) -> dict[str, Any]:
        cfg = model_cfg(model, template)
        return {"family": name, "name": model.name, "num_classes": read_network(cfg).num_classes, "cfg": cfg.text()}

    def from_architecture(architecture: Mapping[str, Any], *, resolution: int | None):
        from search.models.darknet.builder import build_model

        checked = _checked_architecture(name, architecture)
        return build_model(checked, resolution=resolution, name=str(architecture.get("name", keras_name)))

    def filter_clusters(model, scores):
        from search.models.darknet.filters import filter_clusters as clusters

        return clusters(read_network(model_cfg(model, template)), scores)

    def thin(model, removed):
        from search.models.darknet.filters import thin_model

        return thin_model(model, read_network(model_cfg(model, template)), removed)

    def channel_readers(model):
        from search.models.darknet.filters import channel_readers as readers

        return readers(read_network(model_cfg(model, template)))

    def darknet_files(model) -> tuple[str, bytes]:
        from search.models.darknet.weights import darknet_weights_bytes

        return model_cfg(model, template).text(), darknet_weights_bytes(model)

    def with_cfg(cfg_path) -> ModelFamily:
        return darknet_family(parse_cfg(cfg_path), name=name, display_name=f"Darknet {Path(cfg_path).name}",
                              description=description, keras_name=model_name(cfg_path))

    fixed = network(read_network(template).num_classes)
    return ModelFamily(
        name=name, display_name=display_name, description=description, build=build,
        heads=lambda num_classes: network(num_classes).heads(),
        dense_layers=lambda model: fixed.dense_layers, head_layers=lambda model: fixed.head_layers,
        channel_split_layers=lambda model: fixed.split_layers,
        architecture=architecture, from_architecture=from_architecture, filter_clusters=filter_clusters, thin=thin,
        channel_readers=channel_readers,
        card=lambda num_classes: network(num_classes).heads().card(),
        check_files=_check_files, load_pretrained=_load_pretrained, darknet_files=darknet_files, with_cfg=with_cfg,
    )
