"""What the repository directory holds right now: each model's complete versions, what identifies
each one, its aliases and the version to serve. Pure reading, run off the event loop.

A version counts once its ``manifest.json`` exists (exporters rename a finished directory into
place). What is loaded is keyed by the bundle's **identity**, the sha256 of its ``manifest.json``
(which holds every file's sha256 and ``created_at``), not by its number: a version directory
deleted and re-created between two polls is a different bundle and is reloaded. The manifest is
re-read only when a cheap **fingerprint** (inode, size and mtime of the directory and its files)
changes; the same fingerprint also tells a failed version whose files were repaired, or whose
non-atomic copy (``cp -a`` writes the manifest first) has since finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.errors import BundleError
from modelyard.versions import (
    DEFAULT_ALIAS,
    MANIFEST_FILE,
    VERSION_NUMBER,
    default_version,
    is_rejected,
    read_record,
)

log = logging.getLogger("modelyard.serving")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Fingerprint = tuple[tuple[str, int, int, int], ...]


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
    """Reads the repository; caches each version's identity by its fingerprint.

    Args:
        root: the repository directory.
        alias: the alias to serve when a request names no version (``None``: ``default``).
    """

    def __init__(self, root: Path, alias: str | None) -> None:
        self.root = root
        self.alias = alias
        self._known: dict[Path, VersionOnDisk] = {}
        self._records: dict[str, tuple[dict[str, int], int | None]] = {}  # last good, by model

    def scan(self) -> dict[str, ModelOnDisk]:
        """Model name -> what its directory holds now."""
        found: dict[str, ModelOnDisk] = {}
        seen: set[Path] = set()
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not MODEL_NAME.match(model_dir.name):
                continue
            versions: dict[int, VersionOnDisk] = {}
            for d in model_dir.iterdir():
                if VERSION_NUMBER.match(d.name) and (d / MANIFEST_FILE).is_file():
                    versions[int(d.name)] = self._version(d)
                    seen.add(d)
            aliases, target = self._record(model_dir)
            found[model_dir.name] = ModelOnDisk(
                model_dir.name,
                dict(sorted(versions.items())),
                {a: v for a, v in aliases.items() if v in versions},
                target,
            )
        self._known = {p: v for p, v in self._known.items() if p in seen}
        return found

    def _version(self, path: Path) -> VersionOnDisk:
        fp = fingerprint(path)
        known = self._known.get(path)
        if known is not None and known.fingerprint == fp:
            return known
        try:
            identity = hashlib.sha256((path / MANIFEST_FILE).read_bytes()).hexdigest()
        except OSError:
            identity = ""
        found = VersionOnDisk(int(path.name), path, fp, identity, is_rejected(path))
        self._known[path] = found
        return found

    def _record(self, model_dir: Path) -> tuple[dict[str, int], int | None]:
        try:
            record = (read_record(model_dir).aliases, default_version(model_dir, self.alias))
        except BundleError as exc:  # a broken aliases.json: keep following the last good one
            log.error("%s; keeping the aliases read before", exc)
            return self._records.get(model_dir.name, ({}, None))
        self._records[model_dir.name] = record
        return record


def alias_order(aliases: dict[str, int], followed: str | None) -> list[int]:
    """The versions aliases name, most important first: the followed alias, ``default``, others."""
    names = [a for a in (followed, DEFAULT_ALIAS) if a in aliases]
    names += sorted(a for a in aliases if a not in names)
    return list(dict.fromkeys(aliases[a] for a in names))
