"""Staging directories: scratch space inside the destination, named after the process using it.

Every writer stages where its result goes (``REPO/NAME/.tmp-PID-XXXX``), never in the system temp
directory: a writer killed with ``kill -9`` cannot clean up, and what it left is then beside the
versions, hidden from discovery (no version number, a leading dot), and named with the writer's
pid, so the next writer into that model and the server at start can tell a dead writer's leftovers
from a live one's work and remove them (:func:`remove_stale_staging`). Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from modelyard.atomic import fsync_dir

STAGING_PREFIX = ".tmp-"


def staging_prefix() -> str:
    """``.tmp-PID-``: the writer's pid is in the name, so a later writer can tell a dead
    writer's leftovers (kill -9 mid-copy) from a live one's staging."""
    return f"{STAGING_PREFIX}{os.getpid()}-"


def make_staging_dir(parent: str | Path) -> Path:
    """Create a new staging directory ``PARENT/.tmp-PID-XXXX`` (and ``parent`` if missing).

    Dead writers' staging directories directly in ``parent`` are removed first.

    Returns:
        The new directory (mode 0700; the caller removes it).
    """
    root = Path(parent)
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_in(root)
    return Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=root))


@contextlib.contextmanager
def staging_dir(parent: str | Path) -> Iterator[Path]:
    """A staging directory in ``parent`` for the duration of the block, removed on exit.

    Inside the block the process's temporary files (``tempfile``'s default directory, which
    ONNX Runtime's quantizers and the exporters use) go into it too, so a kill -9 leaves
    nothing in the system temp directory. That setting is process-wide: this is for the
    offline paths (export, compress, run), not for a server. Directories made here for
    ``parent`` that are still empty on exit are removed again.
    """
    root = Path(parent).absolute()
    created = [p for p in [root, *root.parents] if not p.exists()]
    path = make_staging_dir(root)
    previous, environ = tempfile.tempdir, dict(os.environ)
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = previous
        # a library that noted a path in here in the environment (torch sets its inductor
        # cache directory once) must neither recreate it once removed nor pass it to children
        for key, value in list(os.environ.items()):
            if environ.get(key) != value and Path(value).is_relative_to(path):
                if key in environ:
                    os.environ[key] = environ[key]
                else:
                    del os.environ[key]
        shutil.rmtree(path, ignore_errors=True)
        for made in created:  # deepest first; one that holds something stays
            with contextlib.suppress(OSError):
                made.rmdir()


def publish_directory(directory: str | Path, write: Callable[[Path], object]) -> Path:
    """Fill a staging directory beside ``directory`` through ``write(staging)``, then rename it
    to ``directory``. An existing ``directory`` is replaced once the new one is complete, so a
    reader sees the old one or the new one, whole; on any error the old one stays.

    Returns:
        ``directory`` as a Path.
    """
    target = Path(directory)
    staging = make_staging_dir(target.parent)
    old: Path | None = None
    try:
        write(staging)
        if target.exists():
            old = make_staging_dir(target.parent) / target.name
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
            raise
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    return target


def is_staging(path: str | Path) -> bool:
    """Whether ``path`` is named like a staging directory."""
    return Path(path).name.startswith(STAGING_PREFIX)


def writer_alive(staging: str | Path) -> bool:
    """Whether the process named in a staging directory's name is still running."""
    # an older layout without a pid: nothing claims it
    return _pid_alive(Path(staging).name[len(STAGING_PREFIX) :].partition("-")[0])


def remove_stale_staging(repo: str | Path) -> list[Path]:
    """Delete the staging directories (``.tmp-*`` and ``NAME/.tmp-*``) and the temporary files
    of atomic writes (an ``aliases.json`` being replaced) whose writer is gone.

    A writer killed mid-write leaves its staging directory behind; it was never visible as a
    version. The next write into that model, and the server at start, clean them up.

    Args:
        repo: the model repository, or one model's directory inside it.

    Returns:
        The directories and files removed.
    """
    root = Path(repo)
    removed = _remove_dead_in(root) + remove_temp_files(root)
    for child in _subdirs(root):
        # a model directory holds the staging directories; a staging directory holds none
        if not is_staging(child):
            removed += _remove_dead_in(child) + remove_temp_files(child)
    return removed


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files atomic writes leave when killed (``.NAME.PID.XXXX.tmp``, see
    :func:`modelyard.atomic.atomic_path`) directly in ``directory``, when their writer is gone.

    A file of a live writer (its pid is running) is a write in progress and stays; one without
    a pid (written before the pid was in the name) is claimed by nobody and goes.

    Returns:
        The files removed.
    """
    removed = []
    try:
        with os.scandir(directory) as entries:
            found = [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    for path in found:
        if (
            path.name.startswith(".")
            and path.name.endswith(".tmp")
            and not _temp_writer_alive(path)
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    return removed


def _temp_writer_alive(path: Path) -> bool:
    # .NAME.PID.XXXX.tmp: the pid is the second field from the end (mkstemp's XXXX has no dot)
    fields = path.name[: -len(".tmp")].rsplit(".", 2)
    return len(fields) == 3 and _pid_alive(fields[1])


def _pid_alive(pid_text: str) -> bool:
    if not pid_text.isascii() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # some other user's live process
    return True


def _remove_dead_in(directory: Path) -> list[Path]:
    removed = []
    for staging in _subdirs(directory):
        if is_staging(staging) and not writer_alive(staging):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _subdirs(path: Path) -> list[Path]:
    # other writers rename and remove directories meanwhile: what vanished is skipped
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
