"""The trial's steps, one verb a module, each knowing nothing of Ray, Optuna or storage layout:

``build`` the network at the trial's resolution; ``fine_tune`` (prune while fine-tuning, cached by
content); ``quantize_aware`` (QAT, for the modes that need it); ``convert`` to TFLite in the
trial's mode; ``measure`` the converted model. ``search.trial.run_trial`` calls them in order.
"""
