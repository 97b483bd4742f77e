"""The drop-then-recovery study: stages, resumable store, study.json, plots and report.html."""

from vlatrim.study.config import StudyConfig
from vlatrim.study.presets import STUDY_PRESETS

__all__ = ["StudyConfig", "STUDY_PRESETS", "run_study"]


def __getattr__(name: str):  # run_study pulls in training and analysis: import it on first use
    if name == "run_study":
        from vlatrim.study.run import run_study

        return run_study
    raise AttributeError(name)
