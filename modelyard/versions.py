"""A model's versions: numbers that are never reused, aliases that name them, and the default.

Each model directory ``REPO/NAME/`` holds its versions (``1/``, ``2/``, …) and one small record,
``aliases.json``, written atomically under a lock::

    {"aliases": {"default": 1, "server": 4, "mobile": 6}, "last_version": 8}

- ``last_version`` is the highest number ever claimed, so a deleted version's number is never
  handed out again (a cache keyed by number can never serve a stale model).
- An alias names a version, as a model registry's do (MLflow aliases, TF Serving labels):
  ``modelyard run`` points ``server`` / ``edge`` / ``mobile`` at each target's choice,
  ``modelyard promote`` moves one, and a server follows the alias it is told to.
- What "the model" means when no version or alias is asked for (:func:`default_version`): the
  ``default`` alias. The first servable version a model gets becomes ``default``, and nothing
  moves it after that but the user: a later export, compress or TFLite variant never changes
  what is served unless an alias is moved. A repository written before aliases existed (no
  record) falls back to the newest version not marked rejected, and keeps that one as its
  ``default`` from its next write on.

Torch-free: the runtime and the server read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.atomic import atomic_write_text
from modelyard.errors import BundleError

RECORD_FILE = "aliases.json"
LOCK_FILE = ".aliases.lock"
MANIFEST_FILE = "manifest.json"
DEFAULT_ALIAS = "default"
# an alias is a name, never a number: "3" always means version 3
ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
# ASCII digits only ("٨" is not version 8); \Z, not "$", which also matches before a final "\n".
VERSION_NUMBER = re.compile(r"^[0-9]{1,9}\Z")

VersionRef = int | str  # a version number, or an alias
# aliases.json is a few hundred bytes; anything past this is not a record (and not read whole)
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelRecord:
    """What ``aliases.json`` holds: alias → version, and the highest version ever claimed."""

    aliases: dict[str, int] = field(default_factory=dict)
    last_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"aliases": dict(sorted(self.aliases.items())), "last_version": self.last_version}


def list_versions(model_dir: str | Path) -> list[int]:
    """The integer versions under ``model_dir`` (``REPO/NAME``), ascending; [] when none."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    return sorted(
        int(p.name) for p in root.iterdir() if p.is_dir() and VERSION_NUMBER.match(p.name)
    )


def is_rejected(bundle_dir: str | Path) -> bool:
    """Whether this version was marked rejected (a variant that lost too much accuracy).

    Rejected variants stay on disk for inspection but never become the default version.
    """
    try:
        data = json.loads((Path(bundle_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # a broken manifest: loading it says why
        return False
    variant = data.get("variant") if isinstance(data, dict) else None
    return bool(isinstance(variant, dict) and variant.get("rejected"))


def read_record(model_dir: str | Path) -> ModelRecord:
    """The model's record; an empty one when it has none yet.

    The read is bounded: a file that is not a regular file (a FIFO, a device: a read that may
    never return) or larger than :data:`MAX_RECORD_BYTES` is refused before it is read, and
    JSON nested too deep to parse is an error like any other bad record.

    Raises:
        BundleError: ``aliases.json`` exists but is not a valid record.
    """
    path = Path(model_dir) / RECORD_FILE
    try:
        data = json.loads(_read_bounded(path))
    except FileNotFoundError:
        return ModelRecord()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable or not JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{path}: not JSON a model record can be (nested too deep)") from None
    aliases = data.get("aliases") if isinstance(data, dict) else None
    last = data.get("last_version", 0) if isinstance(data, dict) else None
    if (
        not isinstance(aliases, dict)
        or not all(isinstance(k, str) and ALIAS_NAME.match(k) for k in aliases)
        or not all(_is_version(v) for v in aliases.values())
        or not (_is_version(last) or last == 0)
    ):
        raise BundleError(
            f"{path}: not a model record; expected "
            '{"aliases": {"NAME": VERSION, ...}, "last_version": N}'
        )
    return ModelRecord(aliases=dict(aliases), last_version=int(last or 0))


def _read_bounded(path: Path) -> str:
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer; fstat then refuses it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: not a regular file")
        if st.st_size > MAX_RECORD_BYTES:
            raise BundleError(
                f"{path}: too large for a model record ({st.st_size} bytes, at most "
                f"{MAX_RECORD_BYTES})"
            )
        data = fh.read(MAX_RECORD_BYTES + 1)  # it may have grown since the fstat
    if len(data) > MAX_RECORD_BYTES:
        raise BundleError(f"{path}: too large for a model record (at most {MAX_RECORD_BYTES})")
    return data.decode("utf-8")


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_ref(ref: VersionRef) -> VersionRef:
    """A version number (ASCII digits, or an int ≥ 1) or an alias name, checked.

    Raises:
        ValueError: anything else (``0``, ``-1``, ``٨``, ``a/b``).
    """
    if isinstance(ref, bool):
        raise ValueError(f"version must be a positive integer or an alias, got {ref!r}")
    if isinstance(ref, int):
        if ref < 1:
            raise ValueError(f"version must be a positive integer or an alias, got {ref!r}")
        return ref
    if VERSION_NUMBER.match(ref):
        if int(ref) < 1:
            raise ValueError(f"version must be a positive integer or an alias, got {ref!r}")
        return int(ref)
    if ALIAS_NAME.match(ref):
        return ref
    raise ValueError(
        f"version must be a positive integer or an alias (letters, digits, '_', '-', '.'), "
        f"got {ref!r}"
    )


def newest_servable(model_dir: str | Path, versions: list[int] | None = None) -> int | None:
    """The newest version on disk not marked rejected (the rule before aliases existed)."""
    root = Path(model_dir)
    found = list_versions(root) if versions is None else versions
    return next((v for v in reversed(found) if not is_rejected(root / str(v))), None)


def default_version(model_dir: str | Path, alias: str | None = None) -> int | None:
    """The version served when none is named.

    Args:
        model_dir: ``REPO/NAME``.
        alias: the alias the caller follows first (a server's ``serve.alias``, e.g. ``server``).

    Returns:
        ``alias``'s version when the model has that alias and the version exists, else the
        ``default`` alias's, else (no record) the newest version not marked rejected; ``None``
        when the model has no servable version.
    """
    root = Path(model_dir)
    return pick_default(
        read_record(root).aliases, list_versions(root), lambda v: is_rejected(root / str(v)), alias
    )


def pick_default(
    aliases: dict[str, int],
    versions: list[int],
    rejected: Callable[[int], bool],
    alias: str | None = None,
) -> int | None:
    """:func:`default_version` from what the caller has read already (``versions`` ascending)."""
    for name in (alias, DEFAULT_ALIAS):
        if name is not None and aliases.get(name) in versions:
            return aliases[name]
    return next((v for v in reversed(versions) if not rejected(v)), None)


def resolve_version(
    model_dir: str | Path, ref: VersionRef | None = None, *, alias: str | None = None
) -> int:
    """The version number ``ref`` names (a number, an alias, or ``None`` for the default).

    Raises:
        BundleError: no such version or alias, or no servable version at all.
    """
    root = Path(model_dir)
    versions = list_versions(root)
    if not versions:
        raise BundleError(f"{root}: not a bundle (no {MANIFEST_FILE} and no version directories)")
    if ref is None:
        found = default_version(root, alias)
        if found is None:
            raise BundleError(f"{root}: every version is a rejected variant; name one explicitly")
        return found
    try:
        parsed = parse_ref(ref)
    except ValueError as exc:
        raise BundleError(f"{root}: {exc}") from None
    if isinstance(parsed, str):
        aliases = read_record(root).aliases
        if parsed not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise BundleError(f"{root}: no alias {parsed!r}; aliases: {known}")
        parsed = aliases[parsed]
    if parsed not in versions:
        raise BundleError(
            f"{root}: no version {parsed}; available: {', '.join(map(str, versions))}"
        )
    return parsed


# ------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def locked(model_dir: str | Path) -> Iterator[None]:
    """Hold the model's record lock (writers of versions and aliases take turns)."""
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_record(model_dir: Path, record: ModelRecord) -> None:
    atomic_write_text(model_dir / RECORD_FILE, json.dumps(record.to_dict(), indent=2) + "\n")


def next_version(model_dir: str | Path) -> int:
    """The number a new version of ``model_dir`` gets: past every one on disk or ever claimed."""
    on_disk = list_versions(model_dir)
    return max([read_record(model_dir).last_version, *on_disk, 0]) + 1


def record_new_version(model_dir: str | Path, version: int) -> ModelRecord:
    """Note a version just renamed into place: bump ``last_version``; give the model its
    ``default`` alias if it has none (the version served so far, else this one if servable).

    Call with :func:`locked` held.
    """
    root = Path(model_dir)
    record = read_record(root)
    aliases = dict(record.aliases)
    if DEFAULT_ALIAS not in aliases:
        before = newest_servable(root, [v for v in list_versions(root) if v != version])
        if before is not None:
            aliases[DEFAULT_ALIAS] = before
        elif not is_rejected(root / str(version)):
            aliases[DEFAULT_ALIAS] = version
    updated = ModelRecord(aliases=aliases, last_version=max(record.last_version, version))
    _write_record(root, updated)
    return updated


def set_alias(model_dir: str | Path, alias: str, version: VersionRef) -> ModelRecord:
    """Point ``alias`` at ``version`` (a number, or another alias to copy); atomic.

    Rolling back is pointing the alias at the version it named before.

    Raises:
        BundleError: an invalid alias name, or a version that does not exist.
    """
    root = Path(model_dir)
    if not ALIAS_NAME.match(alias):
        raise BundleError(
            f"invalid alias {alias!r}: a name of letters, digits, '_', '-', '.', starting with "
            "a letter (a number would read as a version)"
        )
    with locked(root):
        number = resolve_version(root, version)
        record = read_record(root)
        aliases = {**record.aliases, alias: number}
        last = max([record.last_version, *list_versions(root)])
        updated = ModelRecord(aliases=aliases, last_version=last)
        _write_record(root, updated)
    return updated


def remove_alias(model_dir: str | Path, alias: str) -> ModelRecord:
    """Drop ``alias``.

    Raises:
        BundleError: the model has no such alias.
    """
    root = Path(model_dir)
    with locked(root):
        record = read_record(root)
        if alias not in record.aliases:
            known = ", ".join(sorted(record.aliases)) or "none"
            raise BundleError(f"{root}: no alias {alias!r}; aliases: {known}")
        aliases = {k: v for k, v in record.aliases.items() if k != alias}
        updated = ModelRecord(aliases=aliases, last_version=record.last_version)
        _write_record(root, updated)
    return updated


def aliases_of(model_dir: str | Path, version: int) -> list[str]:
    """The aliases naming ``version``, sorted."""
    return sorted(a for a, v in read_record(model_dir).aliases.items() if v == version)
