"""``tune(config, budget=..., trials=...) -> TuneResult``: the search, then the winner.

1. Open (or reopen) the study in the tune directory (:mod:`.study`).
2. Trial after trial: the sampler picks a candidate and its values (:mod:`.portfolio`), the trial
   trains under the time the budget leaves (:mod:`.budget`), reporting each epoch's validation
   score so a lagging one is pruned (:mod:`.trial`); until the trial count or the budget is
   reached.
3. The best completed trial is the winner: its run gets the test file back in its config and is
   evaluated once on it (``eval/metrics.json``, as any run's); the leaderboard goes to the
   terminal, ``leaderboard.json`` and ``report.html`` (:mod:`.page`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelyard.atomic import atomic_write_text
from modelyard.config import Config, dump_config
from modelyard.data import load_splits
from modelyard.errors import ConfigError, RunError
from modelyard.logs import quiet_logger
from modelyard.metrics import higher_is_better
from modelyard.runs import Run
from modelyard.search.budget import (
    MIN_TRIAL_SHARE,
    Budget,
    format_duration,
    parse_duration,
    reserve_for,
)
from modelyard.search.leaderboard import Entry, format_board, rank, winner, write_board
from modelyard.search.page import write_tune_report
from modelyard.search.portfolio import Candidate, select_candidates, trial_config
from modelyard.search.study import (
    CANDIDATE,
    INTERRUPTED,
    SLOT,
    WARMUP_EPOCHS,
    ask,
    finished_trials,
    open_study,
    tune_lock,
)
from modelyard.search.trial import TrialResult, run_trial
from modelyard.tasks import get_task
from modelyard.training.distributed import check_nproc
from modelyard.training.evaluation import evaluate

log = logging.getLogger("modelyard.search")

SETTINGS = "settings"  # study attribute: what the tune was started with


@dataclass
class TuneResult:
    """What a tune found.

    Attributes:
        dir: the tune directory (journal, trial runs, leaderboard, report).
        best: the winning run, scored on the test file; ``None`` when no trial completed.
        leaderboard: every finished trial, best first.
        metric: the validation metric the trials were scored by (``val_accuracy``).
        report: ``report.html``.
        spent_s: the time the tune took, earlier sessions included.
    """

    dir: Path
    best: Run | None
    leaderboard: list[Entry]
    metric: str
    report: Path
    spent_s: float


def tune(
    config: Config,
    *,
    budget: str | float | None = None,
    trials: int | None = None,
    out_dir: str | Path | None = None,
    candidates: Sequence[str] | None = None,
    seed: int | None = None,
    nproc: int = 1,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search the portfolio of candidates for the best model on ``config``'s data.

    The same ``out_dir`` continues a tune that was stopped or killed: finished trials are kept,
    an interrupted one runs again, and the tune ends as an uninterrupted one would.

    Args:
        config: the task and data to tune for (its model and train settings are the baseline
            the candidates replace).
        budget: wall time for the whole tune, e.g. ``"20m"``, ``"90s"`` or seconds; a resumed
            tune spends what the earlier sessions left of it.
        trials: stop after this many finished trials (completed, pruned or failed).
        out_dir: the tune directory (default ``OUTPUT_DIR/NAME-tune``).
        candidates: names from :data:`~modelyard.search.portfolio.CANDIDATE_NAMES` (default:
            every one that can run here).
        seed: the sampler's seed (default: the config's).
        nproc: train each trial data-parallel in this many processes on this machine
            (torchrun, as ``modelyard train --nproc``); pruning then reads each epoch's record
            from the trial's ``metrics.jsonl``.
        progress: called with one line per trial (default: the log).

    Returns:
        A :class:`TuneResult`.

    Raises:
        ConfigError: neither ``budget`` nor ``trials``; an unknown candidate; a generative task.
        RunError: another tune runs in ``out_dir``, or it was started with other settings.
    """
    started = time.monotonic()  # the budget counts from here
    if budget is None and trials is None:
        raise ConfigError("give a time budget (e.g. 20m), a number of trials, or both")
    if trials is not None and trials < 1:
        raise ConfigError(f"trials: must be at least 1, got {trials}")
    task = get_task(config.task)
    if task.generative:
        raise ConfigError(f"task {config.task!r}: tune searches the classifier families only")
    total_s = parse_duration(budget) if budget is not None else None
    chosen = select_candidates(config, candidates)
    if nproc > 1:
        check_nproc(nproc, config)
    seed = config.seed if seed is None else seed
    metric = task.monitor
    up = higher_is_better(metric.removeprefix("val_"))
    tune_dir = (
        Path(out_dir) if out_dir is not None else Path(config.output_dir) / f"{config.name}-tune"
    )
    say = progress or log.info
    settings = {"candidates": [c.name for c in chosen], "seed": seed, "metric": metric}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines tell the progress
    with tune_lock(tune_dir):
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=len(chosen), n_warmup_steps=WARMUP_EPOCHS
        )
        study = open_study(tune_dir, direction="maximize" if up else "minimize", pruner=pruner)
        started_with = study.user_attrs.get(SETTINGS)
        if started_with is None:
            study.set_user_attr(SETTINGS, settings)
        elif started_with != settings:
            raise RunError(
                f"{tune_dir}: this tune was started with {started_with}, not {settings}; "
                "continue it with those, or tune into another directory"
            )
        spent_before = float(study.user_attrs.get("spent_s", 0.0))
        clock = Budget(total_s, spent_before_s=spent_before, started=started)
        splits = load_splits(config)
        texts = splits.validation.texts
        n_test = len(splits.test) if splits.test is not None else 0
        # the per-epoch lines of each trial's training are too many: warnings only, meanwhile
        with quiet_logger("modelyard.training", logging.WARNING):
            _search(
                study,
                nproc,
                config,
                chosen,
                clock,
                trials=trials,
                seed=seed,
                metric=metric,
                tune_dir=tune_dir,
                texts=texts,
                n_test=n_test,
                up=up,
                say=say,
            )
            board = rank(entries(study), higher_is_better=up)
            best = _score_winner(board, config, up)
        study.set_user_attr("spent_s", clock.spent())
        primary = metric.removeprefix("val_")
        write_board(
            board,
            tune_dir / "leaderboard.json",
            metric=metric,
            budget_s=total_s,
            spent_s=clock.spent(),
        )
        report = write_tune_report(
            board,
            tune_dir / "report.html",
            name=config.name,
            metric=primary,
            higher_is_better=up,
            budget_s=total_s,
            spent_s=clock.spent(),
            best=best,
        )
        _drop_losers(board, best)
        say(
            f"{len(board)} trials in {format_duration(clock.spent())}"
            + (f" of {format_duration(total_s)}" if total_s is not None else "")
        )
        say("\n" + format_board(board, primary))
    return TuneResult(tune_dir, best, board, metric, report, clock.spent())


def _search(
    study: optuna.Study,
    nproc: int,
    base: Config,
    chosen: list[Candidate],
    clock: Budget,
    *,
    trials: int | None,
    seed: int,
    metric: str,
    tune_dir: Path,
    texts: Sequence[str],
    n_test: int,
    up: bool,
    say: Callable[[str], None],
) -> None:
    names = [c.name for c in chosen]
    by_name = {c.name: c for c in chosen}
    first = [{"candidate": c.name, **c.fixed_params()} for c in chosen]
    while trials is None or len(finished_trials(study)) < trials:
        if total_s := clock.total_s:  # the winner's test scoring must fit at the end
            clock.reserve_s = max(reserve_for(total_s), _scoring_s(study, n_test, up))
        if clock.for_trial() == 0.0:  # not even a trial of unknown length fits
            say(f"budget spent: {format_duration(clock.spent())}")
            return
        trial = ask(study, seed=seed, first_params=first)
        candidate = by_name[trial.suggest_categorical("candidate", names)]
        trial.set_user_attr(CANDIDATE, candidate.name)
        limit = clock.for_trial(least_time(study, candidate.name, clock.total_s))
        if limit == 0.0:  # it could not finish: left for a tune that goes on with more time
            trial.set_user_attr(INTERRUPTED, True)
            study.tell(trial, state=TrialState.FAIL)
            say(f"budget spent: {format_duration(clock.spent())}")
            return
        slot = int(trial.user_attrs[SLOT])
        config = trial_config(
            base,
            candidate,
            trial,
            name=f"{base.name[:40]}-{slot:03d}-{candidate.name}",
            output_dir=str(tune_dir / "trials"),
        )
        data = config.data.model_copy(update={"test": None})
        train = config.train.model_copy(update={"max_time_s": limit, "progress": False})
        config = config.model_copy(update={"data": data, "train": train})
        # past its time, a trial has half the reserve to finish what does not stop between
        # steps (a validation, a head-only run's features); then it is stopped wherever it is
        hard = None if limit is None else limit + float(clock.reserve_s or 0.0) / 2
        result = run_trial(
            config, trial, metric=metric, texts=texts, nproc=nproc, hard_limit_s=hard
        )
        _tell(study, trial, result, str(Path(config.output_dir) / config.name))
        study.set_user_attr("spent_s", clock.spent())
        say(_progress_line(slot, trials, clock, candidate.name, metric, result))


def _tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult, run_dir: str) -> None:
    attrs: dict[str, Any] = {
        "state": result.state,
        "epochs": result.epochs,
        "train_s": round(result.train_s, 3),
        "first_epoch_s": result.first_epoch_s,
        "size_mb": result.size_mb,
        "latency_ms": result.latency_ms,
        "run_dir": run_dir,
        "error": result.error,
        "score": result.score,
        "sample_s": result.sample_s,
        "needs_s": result.needs_s,
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if result.state == "complete":
        study.tell(trial, result.score)
    elif result.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _scoring_s(study: optuna.Study, n_test: int, up: bool) -> float:
    """What scoring the best trial so far on the test file may take: its training time per
    sample (a forward pass costs less) times the test texts, and a few seconds for the report."""
    done = [t for t in finished_trials(study) if t.state == TrialState.COMPLETE]
    if not done or not n_test:
        return 0.0
    best = (max if up else min)(done, key=lambda t: float(t.value or 0.0))
    return float(best.user_attrs.get("sample_s") or 0.0) * n_test + 3.0


def least_time(study: optuna.Study, candidate: str, total_s: float | None) -> float:
    """The least time a trial of ``candidate`` needs: the shortest it has taken to a first
    validation; for a candidate not run yet, the shortest any has taken; more than a trial of
    it ran before running out of time without one; and at least
    :data:`~.budget.MIN_TRIAL_SHARE` of the budget."""
    done = finished_trials(study)
    firsts = [
        (t.user_attrs.get(CANDIDATE), float(t.user_attrs["first_epoch_s"]))
        for t in done
        if t.user_attrs.get("first_epoch_s")
    ]
    mine = [seconds for name, seconds in firsts if name == candidate]
    own = min(mine) if mine else min((seconds for _, seconds in firsts), default=0.0)
    short = [
        float(t.user_attrs["needs_s"])
        for t in done
        if t.user_attrs.get(CANDIDATE) == candidate and t.user_attrs.get("needs_s")
    ]
    own = max([own, *short])
    return max(own, MIN_TRIAL_SHARE * (total_s or 0.0))


def _progress_line(
    slot: int, trials: int | None, clock: Budget, candidate: str, metric: str, r: TrialResult
) -> str:
    where = f"trial {slot + 1}" + (f"/{trials}" if trials is not None else "")
    left = clock.left()
    if left is not None:
        where += f", {format_duration(max(left, 0.0))} left"
    score = "–" if r.score is None else f"{r.score:.4f}"
    note = {"pruned": "  (pruned)", "failed": f"  (failed: {r.error})"}.get(r.state, "")
    return f"[{where}] {candidate:<16} {metric} {score}  {r.epochs} epochs {r.train_s:.1f}s{note}"


def entries(study: optuna.Study) -> list[Entry]:
    """The leaderboard rows of the study's finished trials, in slot order."""
    return [_entry(t) for t in finished_trials(study)]


def _entry(t: FrozenTrial) -> Entry:
    a = t.user_attrs
    candidate = str(a.get(CANDIDATE, t.params.get("candidate", "?")))
    prefix = f"{candidate}."
    params = {k.removeprefix(prefix): v for k, v in sorted(t.params.items()) if k != "candidate"}
    return Entry(
        slot=int(a[SLOT]),
        candidate=candidate,
        params=params,
        state=str(a.get("state", "failed")),
        score=a.get("score"),
        epochs=int(a.get("epochs", 0)),
        train_s=float(a.get("train_s", 0.0)),
        size_mb=a.get("size_mb"),
        latency_ms=a.get("latency_ms"),
        run_dir=str(a.get("run_dir", "")),
        error=a.get("error"),
    )


def _score_winner(board: list[Entry], base: Config, up: bool) -> Run | None:
    """The winner's run, ready as any run: the test file back in its config, no time limit,
    scored once on the test file (``eval/metrics.json``)."""
    best = winner(board, higher_is_better=up)
    if best is None:
        return None
    run = Run.load(best.run_dir)
    data = run.config.data.model_copy(update={"test": base.data.test})
    train = run.config.train.model_copy(update={"max_time_s": None, "progress": True})
    atomic_write_text(
        run.paths.config, dump_config(run.config.model_copy(update={"data": data, "train": train}))
    )
    if base.data.test is not None:
        result = evaluate(run.dir)
        best.test, best.test_size = result.metrics, result.num_examples
    return Run.load(run.dir)


def _drop_losers(board: list[Entry], best: Run | None) -> None:
    """Only the winner keeps its weights: the other trials keep their config, history and
    run.json (a pretrained candidate's checkpoint is 90 MB)."""
    for entry in board:
        if best is None or Path(entry.run_dir).resolve() != best.dir.resolve():
            shutil.rmtree(Path(entry.run_dir) / "checkpoints", ignore_errors=True)
