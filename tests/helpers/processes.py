"""Child processes in tests: the kill -9 tests' child (step markers on stdout, stderr in a log,
temporary files in a private TMPDIR), and a bounded run that leaves no orphan."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def child_process(
    code: str, args: Sequence[str], *, tmpdir: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``python -c CODE ARGS`` with ``TMPDIR=tmpdir`` and this checkout on ``PYTHONPATH``; stdout
    piped (text), stderr appended to ``log``. The caller kills it when it wants to; on leaving
    the block the child is waited for (killed first if the block raised)."""
    environ = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT), **(env or {})}
    with (
        log.open("a") as err,
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=environ,
        ) as child,
    ):
        assert child.stdout is not None
        try:
            yield child
        except BaseException:
            child.kill()
            raise
        finally:
            child.wait(timeout=300)


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid``, children and theirs (Linux /proc; empty elsewhere)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name in parentheses may hold spaces: the fields after the last ")"
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, ppid in parent.items() if ppid in frontier]
        found += frontier
    return found


def is_rank(pid: int) -> bool:
    """Whether ``pid`` is a process torchrun started (``LOCAL_RANK`` in its environment)."""
    with contextlib.suppress(OSError):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return any(entry.startswith(b"LOCAL_RANK=") for entry in environ)
    return False


def kill_tree(pid: int) -> None:
    """Ask the torchrun ranks below ``pid`` for their stacks (SIGUSR1: the ranks' faulthandler
    writes them to their stderr), then SIGKILL ``pid`` and everything below it."""
    stuck = descendants(pid)
    for rank in filter(is_rank, stuck):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank, signal.SIGUSR1)
    time.sleep(2)
    for victim in [pid, *stuck]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def run_bounded(
    cmd: Sequence[str], *, timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd, capture_output=True, text=True)`` that, past ``timeout``, kills the
    process tree (:func:`kill_tree`) and fails the test with its stderr: a stuck run says where
    its ranks stuck and leaves no orphan behind."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"{' '.join(cmd)} ran past {timeout} s; its stderr:\n{err[-20000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ``python -c KILLED_IN_EPOCH_2 CONFIG``: trains the config; once a mid-epoch checkpoint of the
# second epoch is on disk and one more step is done, prints READY and waits to be killed
KILLED_IN_EPOCH_2 = textwrap.dedent(
    """
    import sys
    from modelyard.config import load_config
    from modelyard.training import epochs, recipe

    real_save, real_step = epochs.save_checkpoint, epochs.train_step
    after = []

    def save_checkpoint(session):
        real_save(session)
        p = session.progress
        if p.epoch >= 1 and p.step_in_epoch > 0 and not after:
            after.append(p.global_step)  # a mid-epoch checkpoint of the second epoch is on disk

    def train_step(session, group):
        out = real_step(session, group)
        if after and session.progress.global_step >= after[0] + 1:
            # in memory the run is a step past its checkpoint; wait here to be killed
            print("READY", flush=True)
            sys.stdin.read()
        return out

    epochs.save_checkpoint, epochs.train_step = save_checkpoint, train_step
    recipe.train(load_config(sys.argv[1]))
    print("FINISHED", flush=True)
    """
)


def train_until_killed(config_file: Path, cwd: Path) -> None:
    """Train ``config_file`` in a child process and SIGKILL it a step past a mid-epoch checkpoint
    of the second epoch (the child says READY; no sleeping)."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_IN_EPOCH_2, str(config_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child reports
        assert line.strip() == "READY", child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
