"""Measured search over YOLOv4-tiny compression settings.

``python -m search run SPACE`` parses the space file (``search.space``), prepares data and a base
model (``search.data``, ``search.base``), runs trials (``search.trial``) under Ray Tune with an
Optuna sampler (``search.tuner``), and writes the Pareto front, report and export
(``search.pareto``, ``search.report``, ``search.export``).
"""

__version__ = "0.1.0"
