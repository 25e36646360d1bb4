"""What the repository directory holds right now: each model's complete versions, what identifies
each one, its aliases and the version to serve. Pure reading, run off the event loop.

A version counts once its ``manifest.json`` exists (exporters rename a finished directory into
place). What is loaded is keyed by the bundle's **identity**, the sha256 of its ``manifest.json``
(which holds every file's sha256 and ``created_at``), not by its number: a version directory
deleted and re-created between two polls is a different bundle and is reloaded. The manifest is
re-read only when a cheap **fingerprint** (inode, size and mtime of the directory and its files)
changes; the same fingerprint also tells a failed version whose files were repaired, or whose
non-atomic copy (``cp -a`` writes the manifest first) has since finished.

Each model is read alone (:meth:`DiskScanner.scan_model`): whatever one model's files do (a
broken or huge ``aliases.json``, a FIFO in its place) is that model's error, never the whole
scan's. ``aliases.json`` is read only when its inode, size, mtime or ctime changed since the last
read, and never more than :data:`modelyard.versions.MAX_RECORD_BYTES` of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.versions import (
    DEFAULT_ALIAS,
    MANIFEST_FILE,
    RECORD_FILE,
    VERSION_NUMBER,
    is_rejected,
    pick_default,
    read_record,
)

log = logging.getLogger("modelyard.serving")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Fingerprint = tuple[tuple[str, int, int, int], ...]
_RecordStat = tuple[int, int, int, int, int]  # inode, size, mtime, ctime (ns), mode


@dataclass(frozen=True)
class VersionOnDisk:
    """One complete version directory as it is now."""

    version: int
    path: Path
    fingerprint: Fingerprint  # changes whenever a file in it is written, replaced or removed
    identity: str  # sha256 of manifest.json: what the loaded model is keyed by
    rejected: bool


@dataclass(frozen=True)
class ModelOnDisk:
    """One model directory: its complete versions, aliases and the version to serve."""

    name: str
    versions: dict[int, VersionOnDisk]
    aliases: dict[str, int] = field(default_factory=dict)  # only aliases naming a version here
    target: int | None = None  # the version to serve (the followed alias, else the default)


def fingerprint(path: Path) -> Fingerprint:
    """(relative name, inode, size, mtime) of the directory and every file under it."""
    rows = []
    for dirpath, _dirs, files in os.walk(path):
        for name in ["", *sorted(files)]:
            full = os.path.join(dirpath, name) if name else dirpath
            try:
                st = os.stat(full)
            except OSError:  # removed while we looked: the next poll sees the rest
                continue
            rows.append((os.path.relpath(full, path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sorted(rows))


class DiskScanner:
    """Reads the repository; caches each version's identity by its fingerprint and each model's
    ``aliases.json`` by its stat.

    Args:
        root: the repository directory.
        alias: the alias to serve when a request names no version (``None``: ``default``).
    """

    def __init__(self, root: Path, alias: str | None) -> None:
        self.root = root
        self.alias = alias
        self._known: dict[str, dict[Path, VersionOnDisk]] = {}  # by model
        # by model: the record's stat when last read, and what that read gave (the aliases, or
        # None when the file was bad: the last good aliases are kept)
        self._records: dict[str, tuple[_RecordStat | None, dict[str, int] | None]] = {}
        self._good: dict[str, dict[str, int]] = {}  # the last good aliases, by model

    def model_dirs(self) -> list[Path]:
        """The model directories (names a URL may use), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(d for d in self.root.iterdir() if MODEL_NAME.match(d.name) and d.is_dir())

    def scan(self) -> dict[str, ModelOnDisk]:
        """Model name -> what its directory holds now; a model that cannot be read is left out
        (and logged)."""
        found: dict[str, ModelOnDisk] = {}
        for model_dir in self.model_dirs():
            try:
                found[model_dir.name] = self.scan_model(model_dir)
            except Exception as exc:  # one model's files fail alone
                log.error("%s: cannot read the model's files: %s", model_dir, exc)
        return found

    def scan_model(self, model_dir: Path) -> ModelOnDisk:
        """What one model directory holds now.

        Raises:
            OSError: the directory cannot be listed (a broken ``aliases.json`` is not an error:
                it is logged once and the aliases read before are kept).
        """
        known = self._known.get(model_dir.name, {})
        versions: dict[int, VersionOnDisk] = {}
        numbers: list[int] = []
        for d in model_dir.iterdir():
            if VERSION_NUMBER.match(d.name) and d.is_dir():
                numbers.append(int(d.name))
                if (d / MANIFEST_FILE).is_file():
                    versions[int(d.name)] = self._version(d, known)
        self._known[model_dir.name] = {v.path: v for v in versions.values()}
        numbers.sort()
        aliases = self._aliases(model_dir)
        # (a version without its manifest yet counts for aliases, not rejected: a copy in
        # progress an alias names stays the target, and is loaded once complete)
        target = pick_default(
            aliases,
            numbers,
            lambda v: v in versions and versions[v].rejected,
            self.alias,
        )
        return ModelOnDisk(
            model_dir.name,
            dict(sorted(versions.items())),
            {a: v for a, v in aliases.items() if v in versions},
            target,
        )

    def _version(self, path: Path, known: dict[Path, VersionOnDisk]) -> VersionOnDisk:
        fp = fingerprint(path)
        before = known.get(path)
        if before is not None and before.fingerprint == fp:
            return before
        try:
            identity = hashlib.sha256((path / MANIFEST_FILE).read_bytes()).hexdigest()
        except OSError:
            identity = ""
        return VersionOnDisk(int(path.name), path, fp, identity, is_rejected(path))

    def _aliases(self, model_dir: Path) -> dict[str, int]:
        """The model's aliases: re-read only when ``aliases.json`` changed since the last read."""
        name = model_dir.name
        try:
            st = os.stat(model_dir / RECORD_FILE)  # a stat: no read, so a FIFO cannot block it
            now: _RecordStat | None = (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_mode,
            )
        except FileNotFoundError:
            now = None
        except OSError:
            now = (-1, -1, -1, -1, -1)  # cannot even stat it: read_record says why
        last = self._records.get(name)
        if last is not None and last[0] == now and now is not None:
            read = last[1]
        else:
            try:
                read = read_record(model_dir).aliases
            except Exception as exc:  # a broken aliases.json: keep following the last good one
                log.error("%s; keeping the aliases read before", exc)
                read = None
            self._records[name] = (now, read)
        if read is not None:
            self._good[name] = read
        return self._good.get(name, {})


def alias_order(aliases: dict[str, int], followed: str | None) -> list[int]:
    """The versions aliases name, most important first: the followed alias, ``default``, others."""
    names = [a for a in (followed, DEFAULT_ALIAS) if a in aliases]
    names += sorted(a for a in aliases if a not in names)
    return list(dict.fromkeys(aliases[a] for a in names))
