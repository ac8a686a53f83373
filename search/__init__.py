"""Measured search over the compression settings of a Darknet YOLO detector (``search.models``).

``python -m search run SPACE`` parses the space file (``search.space``), prepares data and a base
model (``search.data``, ``search.inputs``), runs trials (``search.trial``, its steps in ``search.stages``) under Ray Tune with an
Optuna sampler (``search.tuner``), and writes the Pareto front, report and export
(``search.pareto``, ``search.report``, ``search.export``).
"""

__version__ = "0.1.0"
