"""The tune's Optuna study on disk, and the rules that make a resumed tune end as an
uninterrupted one.

The study lives in ``TUNE_DIR/journal.log`` (Optuna's journal file: one JSON line per change,
appended and fsynced), so a tune killed with SIGKILL loses at most the trial it was running.
Each trial has a *slot*: how many trials had finished before it. Everything a trial depends on is
a function of its slot and of the finished trials before it:

- its sampler is seeded with ``(seed, slot)``, so a resumed process samples what the killed one
  would have (a sampler's random state is not on disk);
- the first slots take each candidate's defaults, in the portfolio's order;
- a trial interrupted mid-way is marked failed (``interrupted``) when the tune reopens, and its
  slot runs again with the same parameters, into the same run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from modelyard.errors import RunError

log = logging.getLogger("modelyard.search")

STUDY_NAME = "tune"
JOURNAL = "journal.log"
# trial user attributes
SLOT, INTERRUPTED, CANDIDATE = "slot", "interrupted", "candidate"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# a pruned trial has run at least this many epochs (its curve has a shape by then)
WARMUP_EPOCHS = 2


@contextlib.contextmanager
def tune_lock(tune_dir: Path) -> Iterator[None]:
    """Hold ``TUNE_DIR/tune.lock`` (an OS lock: released when the process dies, even by
    SIGKILL), so one tune at a time writes the directory.

    Raises:
        RunError: another live process tunes into the directory.
    """
    tune_dir.mkdir(parents=True, exist_ok=True)
    with open(tune_dir / "tune.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{tune_dir}: another tune is running in this directory") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def repair_journal(path: Path) -> None:
    """Make a journal left by a killed writer appendable again: drop a torn last line and the
    journal's own lock file (the tune lock is ours, so no other writer holds it)."""
    Path(f"{path}.lock").unlink(missing_ok=True)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        log.info("%s: dropped a half-written last line", path)


def open_study(
    tune_dir: Path, *, direction: Literal["maximize", "minimize"], pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """Create or reopen the study of ``tune_dir`` (call under :func:`tune_lock`); trials a killed
    tune left running are marked ``interrupted`` so their slots run again."""
    path = tune_dir / JOURNAL
    repair_journal(path)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction=direction,
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise RunError(f"{tune_dir}: this tune was started for another task or metric")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        # a FrozenTrial keeps its storage id private; the storage's API is by that id
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        log.info("trial %s (slot %s) was interrupted: it runs again", trial.number, _slot(trial))
    return study


def _slot(trial: FrozenTrial) -> int | None:
    slot = trial.user_attrs.get(SLOT)
    return int(slot) if slot is not None else None


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count: finished, not interrupted, in slot order."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if _slot(t) is not None and not t.user_attrs.get(INTERRUPTED)
    ]
    return sorted(done, key=lambda t: int(t.user_attrs[SLOT]))


def next_slot(study: optuna.Study) -> int:
    """The slot of the next trial: how many trials have finished."""
    return len(finished_trials(study))


def ask(study: optuna.Study, *, seed: int, first_params: Sequence[dict[str, Any]]) -> optuna.Trial:
    """The next trial, seeded and fixed as its slot says (see the module's notes).

    Args:
        seed: the tune's seed.
        first_params: the fixed parameters of the first slots (each candidate's defaults).
    """
    slot = next_slot(study)
    again = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get(INTERRUPTED) and _slot(t) == slot
    ]
    if again:
        study.enqueue_trial(dict(again[-1].params), skip_if_exists=False)
    elif slot < len(first_params):
        study.enqueue_trial(dict(first_params[slot]), skip_if_exists=False)
    study.sampler = optuna.samplers.TPESampler(
        seed=seed * 100_003 + slot, n_startup_trials=max(10, len(first_params) + 3)
    )
    trial = study.ask()
    trial.set_user_attr(SLOT, slot)
    return trial
