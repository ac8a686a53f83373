"""The one place that decides which Keras this project uses.

TFMOT 0.8 only understands Keras 2, so ``TF_USE_LEGACY_KERAS`` must be set before TensorFlow is
first imported, and models are built with ``tf_keras``. Every module that needs TensorFlow imports
``tf``, ``keras`` and ``tfmot`` (loaded on first use) from here (as TFMOT's own ``core/keras/compat.py`` does), never
directly, so the order of imports can never pick Keras 3 by accident.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from search.quiet import quiet_stderr  # noqa: E402


with quiet_stderr():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    # Probing for GPUs logs a CUDA error on a machine without one; do it now, quietly. This lists
    # physical devices only, so thread settings (``set_threads``) can still be changed afterwards.
    tf.config.list_physical_devices("GPU")

__all__ = ["tf", "keras", "set_threads"]  # and tfmot, loaded on first use (below)


def __getattr__(name: str):
    """``tfmot`` on first use (``from search.compat import tfmot``): importing it takes about a
    second, which a trial that neither prunes nor fine-tunes (a stage cache hit) need not pay."""
    if name == "tfmot":
        with quiet_stderr():
            import tensorflow_model_optimization as tfmot
        globals()["tfmot"] = tfmot
        return tfmot
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def set_threads(num_threads: int) -> None:
    """Limit TensorFlow to ``num_threads`` CPU threads (call before the first op runs).

    A Ray trial that was given one CPU must not spread over both cores of the node, or two
    concurrent trials slow each other down and every timing they record is wrong.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    except RuntimeError:
        # Already initialised in this process (a reused Ray worker): the setting stays as it was.
        pass
