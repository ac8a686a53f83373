"""One exception base for everything a user can fix, caught in one place (``search.cli``).

The CLI prints ``ClassName: message`` on one line and exits with ``EXIT_USER_ERROR``; messages say
what is wrong, where, and what is allowed, e.g.
``calibration_size must be <= 128 (the training images), but got 512 (spaces/x.yaml, search.calibration_size)``.
"""

EXIT_USER_ERROR = 2


class SearchError(Exception):
    """Base of every error caused by the user's input (space file, data, weights, paths)."""


class SpaceError(SearchError):
    """The search-space file is malformed, or a key, type or value in it is not allowed."""


class DataError(SearchError):
    """A dataset is missing, malformed, or inconsistent with the space."""


class WeightsError(SearchError):
    """A weights or cfg file is missing, truncated, or not what the space says it is."""


class RunDirError(SearchError):
    """The run directory exists already or cannot be written."""


class ClusterError(SearchError):
    """The Ray cluster given by ``--address`` cannot be reached."""


class ConversionError(Exception):
    """A TFLite conversion failed or its audit found the model is not what its mode claims.

    Not a ``SearchError``: it is raised inside a trial, and a failed trial is data, not a crash.
    """
