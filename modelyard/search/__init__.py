"""``modelyard tune``: a portfolio of candidates searched with Optuna under a time budget.

``tune(config, budget="20m") -> TuneResult`` (:mod:`.recipe`); the candidates and their spaces
(:mod:`.portfolio`); the time arithmetic (:mod:`.budget`); the study on disk and how a killed
tune resumes (:mod:`.study`); one trial (:mod:`.trial`); the leaderboard (:mod:`.leaderboard`)
and its page (:mod:`.page`). This package imports torch and optuna (``modelyard[train]``).
"""

from __future__ import annotations

from modelyard.search.budget import Budget, parse_duration
from modelyard.search.leaderboard import Entry, format_board, read_board
from modelyard.search.portfolio import CANDIDATE_NAMES, CANDIDATES, Candidate
from modelyard.search.recipe import TuneResult, tune

__all__ = [
    "CANDIDATES",
    "CANDIDATE_NAMES",
    "Budget",
    "Candidate",
    "Entry",
    "TuneResult",
    "format_board",
    "parse_duration",
    "read_board",
    "tune",
]
