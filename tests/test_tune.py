"""``modelyard tune``: budget arithmetic, the candidates' spaces, the leaderboard's order, the
training hooks it relies on, a tiny tune end to end, the command, and a tune killed with
SIGKILL that resumes to the leaderboard of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers.processes import child_process
from helpers.synthetic import write_synthetic

from modelyard.cli import main
from modelyard.config import Config, load_config
from modelyard.errors import ConfigError, RunError
from modelyard.runs import Run, is_run_dir
from modelyard.search import CANDIDATES, Budget, Entry, parse_duration, read_board, tune
from modelyard.search.budget import format_duration, reserve_for
from modelyard.search.leaderboard import format_board, rank, winner
from modelyard.search.portfolio import select_candidates, trial_config
from modelyard.training import Hooks, train

FAST = "bag_words,cnn"  # the candidates the integration tests search: a second a trial


def _config(tmp_path: Path, name: str = "tiny", **train_settings: Any) -> Config:
    data = write_synthetic(tmp_path, 96, 32)
    return load_config(
        {
            "name": name,
            "task": "binary",
            "output_dir": str(tmp_path / "runs"),
            "data": {**data, "validation_split": 0.25},
            "train": {"num_threads": 1, "progress": False, **train_settings},
        }
    )


# ------------------------------------------------------------------------------------- unit
@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20m", 1200), ("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("300", 300), (45, 45)],
)
def test_durations_read_as_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "abc", "20x", "0s", "-5", "5m3"])
def test_bad_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="budget"):
        parse_duration(text)


@pytest.mark.unit
def test_budget_arithmetic() -> None:
    assert reserve_for(1200) == 60 and reserve_for(10) == 5
    clock = Budget(100.0, spent_before_s=10.0, started=1000.0)
    assert clock.spent(now=1020.0) == 30.0
    assert clock.left(now=1020.0) == 70.0
    # the next trial gets what is left less the reserve (5 s of 100), at most half the budget
    assert clock.for_trial(now=1020.0) == 50.0
    assert clock.for_trial(now=1040.0) == 45.0
    # ...unless its candidate's shortest useful run is longer, or nothing is left
    assert clock.for_trial(46.0, now=1040.0) == 0.0
    assert clock.for_trial(now=1096.0) == 0.0
    assert Budget(None).for_trial() is None and Budget(None).left() is None
    assert format_duration(41.25) == "41.2s" and format_duration(754.2) == "12m34s"


@pytest.mark.unit
def test_every_candidate_defaults_cover_its_space_and_make_a_valid_config(tmp_path: Path) -> None:
    base = _config(tmp_path)
    for candidate in CANDIDATES:
        # FixedTrial raises on a parameter its values do not name
        fixed = optuna.trial.FixedTrial(candidate.fixed_params())
        config = trial_config(base, candidate, fixed, name=f"t-{candidate.name}")
        assert config.data == base.data and config.task == base.task
        assert config.train.monitor == "val_accuracy"
        assert config.train.early_stopping is not None
        assert config.train.early_stopping.monitor == "val_loss"
        assert config.train.num_threads == 1  # the base's train settings stay
        assert set(fixed.params) == set(candidate.fixed_params())


@pytest.mark.unit
def test_sampled_values_always_make_valid_configs(tmp_path: Path) -> None:
    base = _config(tmp_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for candidate in CANDIDATES:
        for _ in range(15):
            trial = study.ask()
            config = trial_config(base, candidate, trial)
            kinds.add(config.model.kind)
            assert all(k.startswith(f"{candidate.name}.") for k in trial.params)
            study.tell(trial, 0.5)
    assert kinds == {"linear_ngrams", "bag_of_ngrams", "cnn", "pretrained"}


@pytest.mark.unit
def test_candidates_are_chosen_by_name(tmp_path: Path) -> None:
    base = _config(tmp_path)
    assert [c.name for c in select_candidates(base, ["bag_words", "cnn"])] == ["cnn", "bag_words"]
    with pytest.raises(ConfigError, match="unknown candidate 'svm'; valid: linear_ngrams, bag_"):
        select_candidates(base, ["svm"])


@pytest.mark.unit
def test_the_least_time_a_trial_is_started_with() -> None:
    from modelyard.search.recipe import least_time

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    assert least_time(study, "cnn", None) == 0.0  # nothing known: any time will do
    assert least_time(study, "cnn", 1000.0) == 20.0  # but at least 2% of the budget
    for slot, (name, attrs) in enumerate(
        [
            ("cnn", {"first_epoch_s": 8.0}),
            ("cnn", {"first_epoch_s": 6.0}),
            ("bag_words", {"first_epoch_s": 3.0}),
            ("encoder_head", {"needs_s": 150.0}),  # ran out of time before a first validation
        ]
    ):
        trial = study.ask()
        for key, value in {"slot": slot, "candidate": name, **attrs}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 0.5)
    assert least_time(study, "cnn", None) == 6.0  # its own shortest
    assert least_time(study, "encoder_finetune", None) == 3.0  # untried: the fastest of any
    assert least_time(study, "encoder_head", None) == 150.0  # more than it had


def _entry(slot: int, state: str, score: float | None) -> Entry:
    return Entry(slot=slot, candidate="cnn", params={}, state=state, score=score)


@pytest.mark.unit
def test_leaderboard_order() -> None:
    board = [
        _entry(0, "pruned", 0.95),
        _entry(1, "complete", 0.80),
        _entry(2, "failed", None),
        _entry(3, "complete", 0.90),
        _entry(4, "complete", 0.90),
        _entry(5, "complete", float("nan")),
    ]
    up = [e.slot for e in rank(board, higher_is_better=True)]
    assert up == [3, 4, 1, 5, 0, 2]  # completed by score (ties by slot), pruned, failed
    down = [e.slot for e in rank(board, higher_is_better=False)]
    assert down == [1, 3, 4, 5, 0, 2]
    assert winner(board, higher_is_better=True).slot == 3  # type: ignore[union-attr]
    assert winner([_entry(0, "pruned", 0.9)], higher_is_better=True) is None
    best = _entry(3, "complete", 0.9)
    best.test, best.test_size = {"accuracy": 0.85}, 200
    table = format_board([best, _entry(1, "complete", 0.8)], "accuracy")
    assert "0.8500 (0.794–0.893)" in table.splitlines()[1]


@pytest.mark.unit
def test_a_hard_limit_stops_what_runs_past_it() -> None:
    from modelyard.search.trial import OutOfTime, hard_limit

    started = time.monotonic()
    with pytest.raises(OutOfTime, match=r"hard limit of 0\.1 s"), hard_limit(0.1):
        time.sleep(5)
    assert time.monotonic() - started < 1.0
    with hard_limit(5.0):  # cancelled on the way out
        pass
    with hard_limit(None):
        time.sleep(0.01)
    # an alarm set before (pytest-timeout's) is put back, less the time gone
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        with hard_limit(1.0):
            time.sleep(0.2)
        assert 99.0 < signal.getitimer(signal.ITIMER_REAL)[0] < 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# ------------------------------------------------------------------------ the training hooks
@pytest.mark.integration
def test_an_after_epoch_hook_stops_training(tmp_path: Path) -> None:
    seen: list[int] = []

    def stop_after_two(session: Any, record: dict[str, Any]) -> bool:
        seen.append(int(record["epoch"]))
        return len(seen) == 2

    config = _config(tmp_path, epochs=5)
    run = train(config, hooks=Hooks(after_epoch=[stop_after_two]))
    assert seen == [1, 2] and len(run.history) == 2


@pytest.mark.integration
def test_max_time_s_bounds_training(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=50, batch_size=8, max_time_s=1.0)
    started = time.monotonic()
    run = train(config.model_copy(update={"data": config.data.model_copy(update={"test": None})}))
    # setup and a few epochs, then the epoch under way is cut short and validated
    assert 1 <= len(run.history) < 50 and time.monotonic() - started < 3.0
    assert run.info["status"] == "completed"
    late = config.model_copy(update={"name": "late"})
    late = late.model_copy(update={"train": late.train.model_copy(update={"max_time_s": 1e-6})})
    with pytest.raises(RunError, match="before the first epoch ended"):
        train(late)
    assert json.loads((tmp_path / "runs/late/run.json").read_text())["status"] == "failed"


@pytest.mark.integration
def test_a_trial_whose_curve_lags_is_pruned_there(tmp_path: Path) -> None:
    from modelyard.search.portfolio import CANDIDATES
    from modelyard.search.trial import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # every score is under the threshold: pruned at the first epoch it may be
    pruner = optuna.pruners.ThresholdPruner(lower=1.1, n_warmup_steps=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    cnn = next(c for c in CANDIDATES if c.name == "cnn")
    base = _config(tmp_path)
    config = trial_config(base, cnn, optuna.trial.FixedTrial(cnn.fixed_params()), name="p")
    config = config.model_copy(update={"data": config.data.model_copy(update={"test": None})})
    result = run_trial(config, trial, metric="val_accuracy", texts=["good film"])
    assert result.state == "pruned" and result.epochs == 2  # steps are epochs, from 1
    assert result.score is not None and result.latency_ms is not None
    assert study.trials[0].intermediate_values.keys() == {1, 2}


# ------------------------------------------------------------------------------ end to end
@pytest.mark.integration
def test_a_tiny_tune_picks_a_winner_scored_once_on_the_test_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    lines: list[str] = []
    result = tune(config, trials=3, candidates=FAST.split(","), progress=lines.append)
    board = result.leaderboard
    assert [e.slot for e in sorted(board, key=lambda e: e.slot)] == [0, 1, 2]
    # the first trials are each candidate's defaults, in the portfolio's order
    assert [e.candidate for e in sorted(board, key=lambda e: e.slot)][:2] == ["cnn", "bag_words"]
    assert result.best is not None and board[0].state == "complete"
    assert Path(board[0].run_dir).resolve() == result.best.dir.resolve()
    # the winner is a run like any other: its test file in its config, eval/metrics.json
    assert result.best.config.data.test == config.data.test
    assert result.best.config.train.max_time_s is None
    metrics = json.loads((result.best.paths.eval_dir / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] == board[0].test["accuracy"]  # type: ignore[index]
    assert all(e.test is None for e in board[1:])  # the test file, scored once
    for e in board[1:]:  # the losers keep their record, not their weights
        assert is_run_dir(e.run_dir) and not (Path(e.run_dir) / "checkpoints").exists()
    assert all(e.size_mb and e.latency_ms and e.train_s > 0 for e in board if e.state != "failed")
    assert len(lines) == 5 and lines[0].startswith("[trial 1/3] cnn")
    assert read_board(result.dir / "leaderboard.json") == board
    page = result.report.read_text(encoding="utf-8")
    assert "Leaderboard" in page and page.count("data:image/png;base64,") >= 2
    # the same directory again: nothing left to do, the same board
    again = tune(config, trials=3, candidates=FAST.split(","), progress=lines.append)
    assert [e.same_result() for e in again.leaderboard] == [e.same_result() for e in board]
    with pytest.raises(RunError, match="started with"):
        tune(config, trials=3, candidates=["cnn"])


@pytest.mark.integration
def test_tune_respects_its_budget(tmp_path: Path) -> None:
    config = _config(tmp_path)
    started = time.monotonic()
    result = tune(config, budget="20s", candidates=FAST.split(","), progress=lambda _: None)
    took = time.monotonic() - started
    assert took <= 1.1 * 20, took
    # it stops early only when the next trial would not fit: what is left, less the reserve,
    # is shorter than the quickest first validation a trial has shown (a trial's time or less)
    quickest = min(e.train_s for e in result.leaderboard)
    assert took >= 20 - reserve_for(20) - quickest, (took, quickest)
    assert len(result.leaderboard) >= 2 and result.best is not None
    assert abs(result.spent_s - took) < 1.0


@pytest.mark.integration
def test_tune_command_ends_with_the_best_run(tmp_path: Path, capsys: Any) -> None:
    config = _config(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    assert main(["tune", str(path), "--trials", "2", "--candidates", "cnn"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("best: ") and out[-2].startswith("report: ")
    best = Path(out[-1].removeprefix("best: "))
    assert is_run_dir(best) and Run.load(best).test_metrics is not None
    assert main(["tune", str(path), "--candidates", "cnn"]) == 2  # no budget, no trials
    assert "give a time budget" in capsys.readouterr().err


# ---------------------------------------------------------------------------- kill -9, resume
# `modelyard tune ...` that says READY in the second epoch of its KILL_TRIAL-th trial and waits
# there to be killed (the trial's first epoch is reported to the study by then)
CHILD = """
import os, sys, time
from modelyard.search import recipe
from modelyard.training import epochs
kill_trial = int(os.environ["KILL_TRIAL"])
started = [0]
real_run, real_step = recipe.run_trial, epochs.train_step
def run_trial(config, trial, **kwargs):
    started[0] += 1
    return real_run(config, trial, **kwargs)
def train_step(loop, group):
    out = real_step(loop, group)
    if started[0] == kill_trial and loop.progress.epoch >= 1:
        print("READY", flush=True)
        time.sleep(600)
    return out
recipe.run_trial, epochs.train_step = run_trial, train_step
from modelyard.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_tune_resumes_to_the_uninterrupted_leaderboard(tmp_path: Path) -> None:
    config = _config(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    args = ["tune", str(path), "--trials", "4", "--candidates", FAST]
    whole = tune(config, trials=4, candidates=FAST.split(","), out_dir=tmp_path / "whole")
    # killed in its third trial: the first sampled by TPE rather than a candidate's defaults
    killed = tmp_path / "killed"
    env = {"KILL_TRIAL": "3", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "child.log"
    with child_process(
        CHILD, [*args, "--out", str(killed)], tmpdir=tmp_path, log=log, env=env
    ) as child:
        assert child.stdout is not None
        try:
            for line in child.stdout:
                if line.strip() == "READY":
                    break
        finally:
            os.kill(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, log.read_text()
    assert not (killed / "leaderboard.json").exists()
    resumed = tune(config, trials=4, candidates=FAST.split(","), out_dir=killed)
    assert [e.same_result() for e in resumed.leaderboard] == [
        e.same_result() for e in whole.leaderboard
    ]
    assert [Path(e.run_dir).name for e in resumed.leaderboard] == [
        Path(e.run_dir).name for e in whole.leaderboard
    ]
    journal = (killed / "journal.log").read_text()
    assert journal.count('"interrupted"') == 1  # the killed trial, run again in its slot


@pytest.mark.slow
@pytest.mark.integration
def test_tune_trains_each_trial_on_nproc_ranks(tmp_path: Path) -> None:
    config = _config(tmp_path, batch_size=16)
    result = tune(config, trials=1, candidates=["cnn"], nproc=2, progress=lambda _: None)
    assert result.best is not None and result.best.info["world_size"] == 2
    assert result.leaderboard[0].state == "complete" and result.leaderboard[0].epochs >= 1
