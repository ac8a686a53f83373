"""Network families: ``FAMILIES`` maps a space's ``model.name`` to its ``ModelFamily``.

Everything specific to one network (layers, anchors, strides, head layout, which convs stay
dense, the CSP split, Darknet import) lives in its family's package; the rest of the search
reads it through ``get_family(name)``. TensorFlow-free at import: the space validator reads it.
Adding a family: a package beside ``yolov4_tiny/`` whose ``FAMILY`` fills ``ModelFamily`` (for a
Darknet-cfg network, ``search.models.darknet.family.darknet_family`` fills it from the cfg), and
one entry below. A space's ``model.cfg`` makes the family's networks from that cfg (``family_of``).
"""

from __future__ import annotations

from search.models.family import ModelFamily, YoloHeads
from search.models.yolov4_tiny import FAMILY as _YOLOV4_TINY
from search.spec import choose

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "ModelFamily", "YoloHeads", "family_of", "get_family"]

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (_YOLOV4_TINY,)}
DEFAULT_FAMILY = _YOLOV4_TINY.name  # model.name when a space file gives none


def get_family(name: str, *, cfg=None) -> ModelFamily:
    """The family called ``name``, its networks made from the Darknet ``cfg`` file when one is given
    (a space's ``model.cfg``). An unknown name is one ``SpaceError`` line suggesting the closest; a
    cfg the family cannot build is one ``WeightsError`` line naming the layer and key."""
    family = choose(FAMILIES, name, what="model.name")
    return family.with_cfg(cfg) if cfg else family


def family_of(model) -> ModelFamily:
    """The family a space's ``model`` section names (``name``), made from its ``cfg`` when it gives one."""
    return get_family(model.name, cfg=model.cfg)
