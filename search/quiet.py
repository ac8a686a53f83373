"""Silencing C++ chatter on file descriptor 2 for a moment (TensorFlow's import, the converter).

TensorFlow and its converter print INFO lines and MLIR notes from C++ straight to fd 2, where no
Python logging setting reaches them; on a user's terminal they bury the one-line errors and the
progress output. Errors are not lost: they arrive as Python exceptions.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager


@contextmanager
def quiet_stderr():
    """Send file descriptor 2 (and Python warnings) to /dev/null while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
