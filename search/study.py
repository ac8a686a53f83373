"""The Optuna study of a run, kept in the run directory so that Optuna's own tools open it.

``optuna-dashboard <run_dir>/optuna.journal`` and ``optuna.load_study(study_name=..., storage=...)``
(``load_study(run_dir)`` here) see every trial the sampler was told of, with its parameters and
values. A journal file, not SQLite: it is appended to, needs no server and survives a killed
driver (Tune's saved searcher state points at the same file when a run is resumed).
"""

from __future__ import annotations

from pathlib import Path

JOURNAL = "optuna.journal"


def journal_storage(run_dir: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(run_dir).resolve() / JOURNAL)))


def load_study(run_dir: Path):
    """The run's study, as ``optuna.load_study`` opens it (the run has one study, named after its space)."""
    import optuna

    storage = journal_storage(run_dir)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)
