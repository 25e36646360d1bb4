"""A child Python process for the kill -9 tests: its step markers on stdout, its stderr in a log,
its temporary files in a private TMPDIR."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

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
