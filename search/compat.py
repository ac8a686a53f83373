"""The one place that decides which Keras this project uses.

TFMOT 0.8 only understands Keras 2, so ``TF_USE_LEGACY_KERAS`` must be set before TensorFlow is
first imported, and models are built with ``tf_keras``. Every module that needs TensorFlow imports
``tf``, ``keras`` and ``tfmot`` from here (as TFMOT's own ``core/keras/compat.py`` does), never
directly, so the order of imports can never pick Keras 3 by accident.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ INFO/WARNING lines (oneDNN notices, CUDA probing) drown progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

__all__ = ["tf", "keras", "tfmot", "set_threads"]


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
