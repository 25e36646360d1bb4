"""Test-only: record every write a process makes under ``WRITE_AUDIT_ROOT`` (Python audit hooks).

A directory holding this file is put on ``PYTHONPATH`` of the processes a test starts; each
process then appends ``event<TAB>path`` lines for files opened for writing, renames, mkdir and
deletes under the root to ``WRITE_AUDIT_DIR/<RANK or 'launcher'>-<pid>.txt``. The log file is
opened before the hook is installed and written with ``os.write``, which is not audited.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.environ.get("WRITE_AUDIT_ROOT")
_DIR = os.environ.get("WRITE_AUDIT_DIR")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install(root: str, directory: str) -> None:
    name = f"{os.environ.get('RANK', 'launcher')}-{os.getpid()}.txt"
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(event: str, path: object) -> None:
        if isinstance(path, int):
            return
        text = os.path.abspath(os.fsdecode(path))  # type: ignore[arg-type]
        if text.startswith(root):
            os.write(fd, f"{event}\t{text}\n".encode())

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else False
            if writes or (isinstance(flags, int) and flags & _WRITE_FLAGS):
                record(event, path)
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            record(event, args[1] if event == "os.rename" else args[0])

    sys.addaudithook(hook)


if _ROOT and _DIR:
    _install(os.path.abspath(_ROOT), _DIR)
