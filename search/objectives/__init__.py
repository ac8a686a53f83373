"""What a trial can be judged by (``OBJECTIVES``) and how each is measured; see ``table``."""

from search.objectives.objective import DIRECTIONS, MAXIMIZE, MINIMIZE, Artifact, MeasureContext, Measurement, Objective
from search.objectives.table import OBJECTIVES, always_measured, measurements_for, recorded_columns, unrecordable

__all__ = ["DIRECTIONS", "MAXIMIZE", "MINIMIZE", "OBJECTIVES", "Artifact", "MeasureContext", "Measurement", "Objective",
           "always_measured", "measurements_for", "recorded_columns", "unrecordable"]
