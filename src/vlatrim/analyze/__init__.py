"""Importance analysis: which blocks, heads, MLP channels and vocabulary rows the task needs.

Scorers (one module each in ``scorers/``, registered in ``SCORERS``) run over the same calibration
batches against a pluggable loss (``LossSpec``); ``run_scorers`` compares every block ranking with
drop-one; ``analyze`` goes from a model path and a dataset to ``analysis.json`` and plots.
"""

from vlatrim.analyze.base import SCORERS, LossSpec, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.run import DEFAULT_SCORERS, run_scorers, spearman

__all__ = ["DEFAULT_SCORERS", "SCORERS", "LossSpec", "ScoreResult", "Scorer", "ScoringContext", "run_scorers",
           "spearman"]
