"""Step 1: the network the trial starts from, built at its resolution (weights come in step 2)."""

from __future__ import annotations


def build(family, *, num_classes: int, resolution: int):
    """``family``'s network for ``num_classes`` at ``resolution``, in a cleared Keras session: a
    reused Ray worker (``search.tuner``) holds nothing of its previous trial."""
    from search.compat import keras

    keras.backend.clear_session()
    return family.build(num_classes=num_classes, resolution=resolution)
