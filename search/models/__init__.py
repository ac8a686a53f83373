"""Network families: ``FAMILIES`` maps a space's ``model.name`` to its ``ModelFamily``.

Everything specific to one network (layers, anchors, strides, head layout, which convs stay
dense, the CSP split, Darknet import) lives in its family's package; the rest of the search
reads it through ``get_family(name)``. TensorFlow-free at import: the space validator reads it.
Adding a family: a package beside ``yolov4_tiny/`` whose ``FAMILY`` fills ``ModelFamily``, and
one entry below.
"""

from __future__ import annotations

from search.models.family import ModelFamily, YoloHeads
from search.models.yolov4_tiny import FAMILY as _YOLOV4_TINY
from search.spec import choose

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "ModelFamily", "YoloHeads", "get_family"]

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (_YOLOV4_TINY,)}
DEFAULT_FAMILY = _YOLOV4_TINY.name  # model.name when a space file gives none


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; any other name is one ``SpaceError`` line suggesting the closest."""
    return choose(FAMILIES, name, what="model.name")
