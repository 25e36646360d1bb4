"""One trial: train a candidate's config under the trial's time limit, report each epoch's
validation score to Optuna (which may prune it there), then measure what the leaderboard shows.

A trial trains without the test file: the search sees validation scores only, and the test file
is scored once, for the winner (:mod:`.recipe`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from modelyard.atomic import atomic_write_text
from modelyard.config import Config, dump_config
from modelyard.errors import ModelyardError, RunError
from modelyard.metrics import higher_is_better
from modelyard.runs import Run, RunPaths, read_history
from modelyard.tokenize import encode, load_tokenizer, tokenizer_info
from modelyard.training import train
from modelyard.training.collate import TokenBatches, encoded_split
from modelyard.training.distributed import torchrun_command
from modelyard.training.predict import forward_logits, load_model
from modelyard.training.state import Hooks, Session

log = logging.getLogger("modelyard.search")

LATENCY_TEXTS = 16  # single texts timed for the latency column


@dataclass
class TrialResult:
    """What a trial did.

    Attributes:
        state: ``complete``, ``pruned`` or ``failed``.
        score: the best validation score (``None``: it never validated).
        epochs: epochs trained.
        train_s: wall time, setup to the last validation.
        first_epoch_s: from its start to the end of its first validation (``None``: none).
        size_mb, latency_ms: of the best checkpoint (``None`` for a failed trial).
        error: why it failed.
    """

    state: str
    score: float | None
    epochs: int
    train_s: float
    first_epoch_s: float | None = None
    size_mb: float | None = None
    latency_ms: float | None = None
    error: str | None = None
    sample_s: float | None = None  # training seconds per sample (epochs' mean)
    needs_s: float | None = None  # out of time before a first validation: it needs more


def pruning(
    trial: optuna.Trial, metric: str, pruned: list[int], started: float, first_epoch: list[float]
) -> Any:
    """An ``after_epoch`` hook: report the epoch's ``metric`` to the trial; stop the run when
    the study's pruner says its curve lags (``pruned`` gets the epoch)."""

    def hook(session: Session, record: dict[str, Any]) -> bool:
        if not first_epoch:
            first_epoch.append(time.monotonic() - started)
        value = record.get(metric)
        if value is None or not math.isfinite(float(value)):
            return False
        epoch = int(record["epoch"])
        trial.report(float(value), epoch)
        if trial.should_prune():
            pruned.append(epoch)
            return True
        return False

    return hook


class OutOfTime(RunError):
    """A trial ran past its hard limit (a setup or a validation longer than its time)."""


@contextlib.contextmanager
def hard_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`OutOfTime` in this (the main) thread once ``seconds`` have passed.

    ``train.max_time_s`` stops a run between steps; what runs outside the steps (loading an
    encoder, a head-only run's features, a validation) can overrun it: this bounds the rest.
    Without a limit, or off the main thread (no signals there), it does nothing.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise OutOfTime(f"ran past its hard limit of {seconds:.1f} s")

    pending, interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < pending <= seconds:  # someone's alarm (e.g. pytest-timeout's) comes first: theirs
        yield
        return
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if pending > 0:  # put back the alarm that was set before, less the time gone
            left = max(pending - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


def run_trial(
    config: Config,
    trial: optuna.Trial,
    *,
    metric: str,
    texts: Sequence[str],
    nproc: int = 1,
    hard_limit_s: float | None = None,
) -> TrialResult:
    """Train ``config`` (its run directory is replaced) and measure it.

    Args:
        config: the trial's config (:func:`.portfolio.trial_config`), test file unset.
        trial: the Optuna trial it reports to.
        metric: the validation record key it is scored by (``val_accuracy``).
        texts: texts to time the model on.
        nproc: train data-parallel in this many processes (torchrun, as ``train --nproc``).
        hard_limit_s: past this (``train.max_time_s`` and a grace), the trial is stopped
            wherever it is and fails (``None``: no limit).
    """
    run_dir = Path(config.output_dir) / config.name
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed tune's half-trained trial
    started = time.monotonic()
    pruned: list[int] = []
    first_epoch: list[float] = []
    hook = pruning(trial, metric, pruned, started, first_epoch)
    try:
        if nproc > 1:
            run = train_ranks(config, nproc, hook, hard_limit_s=hard_limit_s)
        else:
            with hard_limit(hard_limit_s):
                run = train(config, hooks=Hooks(after_epoch=[hook]))
    except (ModelyardError, RuntimeError, ValueError) as exc:
        log.warning("trial %s failed: %s", config.name, exc)
        took = time.monotonic() - started
        # under a time limit, no first validation: it needs more than it had
        needs = took if config.train.max_time_s is not None and not first_epoch else None
        return TrialResult("failed", None, 0, took, error=str(exc), needs_s=needs)
    train_s = time.monotonic() - started
    first_s = first_epoch[0] if first_epoch else None
    _drop_resume_state(run.paths)
    scores = [float(r[metric]) for r in run.history if r.get(metric) is not None]
    scores = [v for v in scores if math.isfinite(v)]
    if not scores:
        reason = "no epoch finished in its time" if not run.history else f"no finite {metric}"
        return TrialResult("failed", None, len(run.history), train_s, first_s, error=reason)
    best = max(scores) if higher_is_better(metric.removeprefix("val_")) else min(scores)
    size_mb = run.paths.weights("best").stat().st_size / 1e6
    return TrialResult(
        "pruned" if pruned else "complete",
        float(best),
        len(run.history),
        train_s,
        first_s,
        size_mb=size_mb,
        latency_ms=measure_latency(run, texts),
        sample_s=_seconds_per_sample(run.history),
    )


def _seconds_per_sample(history: Sequence[dict[str, Any]]) -> float | None:
    rates = [float(r["samples_per_s"]) for r in history if r.get("samples_per_s")]
    return sum(1 / r for r in rates) / len(rates) if rates else None


def train_ranks(
    config: Config,
    nproc: int,
    hook: Any,
    *,
    hard_limit_s: float | None = None,
    poll_s: float = 0.5,
) -> Run:
    """Train ``config`` as ``nproc`` ranks under torchrun (``modelyard train --nproc``), feeding
    each epoch's record, as rank 0 writes it to ``metrics.jsonl``, to ``hook``; when the hook
    says stop (pruned), the ranks are stopped there (SIGTERM; the best checkpoint stays).

    Raises:
        RunError: the ranks failed.
        OutOfTime: they ran past ``hard_limit_s`` (then killed).
    """
    started = time.monotonic()
    run_dir = Path(config.output_dir) / config.name
    config_file = Path(config.output_dir) / f"{config.name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file, dump_config(config))
    cmd = torchrun_command(["--log-level", "warning", "train", str(config_file)], nproc)
    seen, stopped = 0, False
    log_file = Path(config.output_dir) / f"{config.name}.log"  # the ranks' stderr
    # in a session of their own: torchrun and its ranks are stopped together, as a group
    with (
        log_file.open("w") as err,
        subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        ) as proc,
    ):
        while True:
            done = proc.poll() is not None
            records = read_history(RunPaths(run_dir).metrics) if run_dir.is_dir() else []
            for record in records[seen:]:
                if not stopped and hook(None, record):
                    _signal_group(proc, signal.SIGTERM)
                    stopped = True
            seen = len(records)
            if done:
                break
            if hard_limit_s is not None and time.monotonic() - started > hard_limit_s:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
                raise OutOfTime(f"ran past its hard limit of {hard_limit_s:.1f} s")
            time.sleep(poll_s)
    if proc.returncode != 0 and not stopped:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
        raise RunError(f"{nproc} ranks failed (exit {proc.returncode}): {tail}")
    return Run.load(run_dir)


def _signal_group(proc: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def _drop_resume_state(paths: RunPaths) -> None:
    """A trial is never resumed (an interrupted one runs again): its last checkpoint and
    training state are dead weight beside the best weights."""
    paths.weights("last").unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)


def measure_latency(run: Run, texts: Sequence[str]) -> float | None:
    """Median milliseconds to score one text with the run's best torch model (tokenizing
    included), over up to :data:`LATENCY_TEXTS` texts after one warm-up."""
    texts = list(texts)[:LATENCY_TEXTS]
    if not texts:
        return None
    model = load_model(run)
    tok = load_tokenizer(run.paths.tokenizer)
    info = tokenizer_info(tok)
    batch = TokenBatches(
        pad_id=info.pad_id,
        side=info.padding_side,
        length=None,
        device=next(model.parameters()).device,
    )
    times = []
    for text in [texts[0], *texts]:
        t0 = time.perf_counter()
        forward_logits(model, encoded_split(encode(tok, [text])), batch, batch_size=1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000
