"""The model repository: which versions are loaded and served, kept in step with the directory.

Per model the server serves the version its followed alias names (``serve.alias``, e.g.
``server``), else the ``default`` alias's, else (a repository without ``aliases.json``) the newest
version not marked rejected (:func:`modelyard.versions.default_version`). A new version written
into the repository changes nothing until an alias is moved onto it.

A background task re-reads the directory and ``aliases.json`` every ``poll_s``. When the version
to serve changes (an alias moved forward, or back: a rollback) or its directory is replaced, the
new one is loaded and warmed off the event loop, given its own batcher, and only then swapped in;
the old one drains (its queued requests are answered) and is dropped. Loaded stay: the served
version and every version an alias names (``/versions/server/infer``), at most
``max_loaded_versions`` per model.

A version that fails to load is retried: at once when its files change (a repaired bundle, a
``cp -a`` that has finished), else with exponential backoff. It is listed as failed, never as
available, until it loads; one no longer a candidate (a newer version took over) is not retried,
but once its files change its failure is forgotten: it is available again, and loaded when an
alias names it. When the version to serve fails the server keeps serving what it served; at
startup (or when nothing serves) it falls back, in the same pass, to the next candidate: the
``default`` alias's version, then the newest versions. A model none of whose versions loads
answers 503 with the reason and does not hold the others back. Each model's files are read
alone, bounded in time (:mod:`modelyard.serving.reading`).

A loaded version whose files change in place (same manifest) is verified again (size, sha256)
on the next poll; if they no longer match it is listed as failed and logged (a restart would
not load it) while the copy in memory keeps answering, until the files verify again. Requests
are resolved against the in-memory table only: a model name from a URL never touches the
filesystem, so it cannot escape the repository directory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.bundle import remove_stale_staging, verify_bundle
from modelyard.serving.batcher import BatchInfo, DynamicBatcher
from modelyard.serving.discovery import (
    MODEL_NAME,
    DiskScanner,
    Fingerprint,
    ModelOnDisk,
    VersionOnDisk,
    alias_order,
)
from modelyard.serving.generation import GenerationQueue
from modelyard.serving.inference import (
    Loader,
    PredictorLike,
    TextResult,
    default_loader,
    load_and_warm,
    make_batch_fn,
)
from modelyard.serving.reading import RepositoryReader, in_daemon_thread
from modelyard.tasks import get_task
from modelyard.versions import DEFAULT_ALIAS, VersionRef

log = logging.getLogger("modelyard.serving")

__all__ = ["MODEL_NAME", "ModelEntry", "ModelNotFoundError", "ModelRepository", "ModelVersion"]


class ModelNotFoundError(Exception):
    """Unknown model, alias or version (404)."""


class ModelUnavailableError(Exception):
    """The model (or the asked version) exists but could not be loaded (503)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class ModelVersion:
    """One loaded, warmed version of a model with its own batcher."""

    name: str
    version: int
    predictor: PredictorLike
    batcher: DynamicBatcher[str, TextResult] | GenerationQueue  # a generative model's: its slots
    num_scores: int
    has_labels: bool
    identity: str = ""  # the bundle it was loaded from (sha256 of its manifest)
    fingerprint: Fingerprint = ()  # its files when last verified (loaded or checked)


@dataclass
class LoadFailure:
    """Why a version could not load, and when it is tried again."""

    error: str
    fingerprint: Fingerprint
    attempts: int
    retry_at: float  # time.monotonic()


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)  # loaded
    served: int | None = None  # what a request naming no version gets
    target: int | None = None  # what the followed alias (or default) names: what should serve
    aliases: dict[str, int] = field(default_factory=dict)
    on_disk: list[int] = field(default_factory=list)  # complete versions
    rejected: set[int] = field(default_factory=set)
    failed: dict[int, LoadFailure] = field(default_factory=dict)

    @property
    def available(self) -> list[int]:
        """Versions on disk that are servable: not rejected, not failing to load."""
        return [v for v in self.on_disk if v not in self.rejected and v not in self.failed]

    def problem(self) -> str:
        """Why nothing (or not the target) serves, in one line."""
        if not self.failed:
            return f"model {self.name!r} has no servable version yet"
        why = "; ".join(f"version {v}: {f.error}" for v, f in sorted(self.failed.items()))
        return f"model {self.name!r} failed to load ({why}); retrying"

    def retry_after_s(self) -> float:
        if not self.failed:
            return 1.0
        return max(1.0, min(f.retry_at for f in self.failed.values()) - time.monotonic())


class ModelRepository:
    """Loaded models by name and version, kept in step with the repository directory.

    Args:
        root: the repository directory (``models/``).
        loader: loads one version directory into a predictor (default: ``modelyard.runtime``).
        alias: the alias served when a request names no version (``None``: ``default``).
        max_batch_size, max_delay_ms, max_queue: batcher settings for every model version.
        poll_s: how often the directory is re-read; also the first retry delay of a failure.
        max_backoff_s: the longest wait between two tries of a version whose files stay as they
            were.
        max_loaded_versions: versions loaded per model (the served one, then aliased ones).
        on_batch: metrics hook ``(model, version, info)``.
        on_load_failure: metrics hook ``(model, version)``.
        generation: starts a generative version's queue ``(generator, name)``.
        read_timeout_s: how long one pass waits for a model's files to be read.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        loader: Loader | None = None,
        alias: str | None = None,
        max_batch_size: int = 64,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        poll_s: float = 2.0,
        max_backoff_s: float = 60.0,
        max_loaded_versions: int = 4,
        on_batch: Callable[[str, int, BatchInfo], None] | None = None,
        on_load_failure: Callable[[str, int], None] | None = None,
        read_timeout_s: float = 10.0,
        generation: Callable[[Any, str], GenerationQueue] | None = None,
    ) -> None:
        self.root = Path(root)
        self.alias = alias
        self._loader = loader or default_loader
        self._reader = RepositoryReader(DiskScanner(self.root, alias), read_timeout_s)
        self._batch_settings = dict(
            max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue
        )
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.max_loaded_versions = max(1, max_loaded_versions)
        self._on_batch = on_batch
        self._on_load_failure = on_load_failure
        self._generation = generation
        self.models: dict[str, ModelEntry] = {}
        self._poller: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self.started = False
        self.stopping = False

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self, *, poll: bool = True) -> None:
        """Load and warm the version to serve of every model, then start polling for changes.

        Staging directories that a killed exporter left behind are removed first.
        """
        for staging in remove_stale_staging(self.root):
            log.info("removed %s, left behind by an interrupted write", staging)
        await self.refresh()
        self.started = True
        if poll:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop polling, then drain every batcher (queued requests are answered first)."""
        self.stopping = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        batchers = [mv.batcher for e in self.models.values() for mv in e.versions.values()]
        await asyncio.gather(*(b.stop() for b in batchers), return_exceptions=True)
        await asyncio.gather(*self._draining, return_exceptions=True)

    @property
    def ready(self) -> bool:
        """Started, not stopping, and serving: at least one model serves (when any has a version).

        A model none of whose versions loads does not hold the server back: it answers 503 with
        the reason, and ``/v2/models/NAME/ready`` reports it.
        """
        if not self.started or self.stopping:
            return False
        servable = [e for e in self.models.values() if e.served or e.available or e.failed]
        return not servable or any(e.served is not None for e in servable)

    # -------------------------------------------------------------------------------- lookup
    def get(self, name: str, version: VersionRef | None = None) -> ModelVersion:
        """The loaded version a request gets: the served one, or the asked number or alias.

        Raises:
            ModelNotFoundError: unknown model, alias, or a version that is not loaded.
            ModelUnavailableError: the model (or that version) failed to load.
        """
        entry = self.models.get(name)
        if entry is None or (entry.served is None and not entry.on_disk):
            raise ModelNotFoundError(f"model {name!r} not found")
        if version is None:
            if entry.served is None:
                raise ModelUnavailableError(entry.problem(), entry.retry_after_s())
            return entry.versions[entry.served]
        if isinstance(version, str):
            if version not in entry.aliases:
                known = ", ".join(sorted(entry.aliases)) or "none"
                raise ModelNotFoundError(f"model {name!r} has no alias {version!r} ({known})")
            version = entry.aliases[version]
        found = entry.versions.get(version)
        if found is not None:
            return found
        failure = entry.failed.get(version)
        if failure is not None:
            raise ModelUnavailableError(
                f"version {version} of model {name!r} failed to load ({failure.error}); retrying",
                max(1.0, failure.retry_at - time.monotonic()),
            )
        loaded = ", ".join(str(x) for x in sorted(entry.versions)) or "none"
        raise ModelNotFoundError(
            f"version {version} of model {name!r} is not loaded (loaded: {loaded})"
        )

    # ----------------------------------------------------------------------------- reloading
    async def refresh(self) -> bool:
        """One pass: follow aliases, load what should be loaded, drop what is gone.

        Returns:
            Whether the served or loaded versions changed.
        """
        async with self._refresh_lock:
            on_disk = await self._reader.read()
            if on_disk is None:
                return False  # the repository itself cannot be listed: change nothing
            changed = False
            for name, model in on_disk.items():
                entry = self.models.setdefault(name, ModelEntry(name))
                changed |= await self._settle(entry, model)
            for name in [n for n in self.models if n not in on_disk]:
                entry = self.models.pop(name)
                for v in list(entry.versions):
                    self._unload(entry, v)
                changed = True
            return changed

    async def _settle(self, entry: ModelEntry, model: ModelOnDisk) -> bool:
        entry.on_disk = list(model.versions)
        entry.rejected = {v for v, d in model.versions.items() if d.rejected}
        entry.target = model.target
        entry.failed = {v: f for v, f in entry.failed.items() if v in model.versions}
        before = (entry.served, {v: mv.identity for v, mv in entry.versions.items()})
        served = await self._choose_served(entry, model)
        if served is not None and served != entry.served:
            if entry.served is not None:
                log.info("%s: serving version %d (was %s)", entry.name, served, entry.served)
            entry.served = served  # the swap: new requests naming no version go there now
        for v in self._keep(entry.served, model.aliases):
            if v != entry.served and v in model.versions:
                await self._ensure(entry, model.versions[v], quiet=True)
        # an alias moves in the URLs once its new version is loaded, as the served version does
        previous = entry.aliases
        entry.aliases = {
            a: previous[a] if v not in entry.versions and previous.get(a) in entry.versions else v
            for a, v in model.aliases.items()
        }
        keep = self._keep(entry.served, entry.aliases)
        for v in [v for v in entry.versions if v not in keep]:
            self._unload(entry, v)
        # a failure whose files changed since was not retried in this pass (no longer a
        # candidate: a newer version took over): repaired, or its copy finished, it is untried
        # again, listed as available and loaded when an alias names it, not loaded for nothing
        entry.failed = {
            v: f for v, f in entry.failed.items() if f.fingerprint == model.versions[v].fingerprint
        }
        return before != (entry.served, {v: mv.identity for v, mv in entry.versions.items()})

    def _keep(self, served: int | None, aliases: dict[str, int]) -> list[int]:
        keep = [v for v in [served, *alias_order(aliases, self.alias)] if v is not None]
        return list(dict.fromkeys(keep))[: self.max_loaded_versions]

    async def _choose_served(self, entry: ModelEntry, model: ModelOnDisk) -> int | None:
        # the target first; then what serves now (a failing target keeps it); then, when nothing
        # serves, every other candidate in this same pass
        order = [model.target, entry.served if entry.served in model.versions else None]
        order += [model.aliases.get(DEFAULT_ALIAS)]
        order += [v for v in reversed(model.versions) if not model.versions[v].rejected]
        # (a target without its manifest yet, a copy in progress, is not a candidate)
        for v in dict.fromkeys(v for v in order if v is not None and v in model.versions):
            if await self._ensure(entry, model.versions[v]):
                return v
        # nothing on disk loads: keep what is in memory (its directory may have been deleted)
        return entry.served if entry.served in entry.versions else None

    async def _ensure(
        self, entry: ModelEntry, found: VersionOnDisk, *, quiet: bool = False
    ) -> bool:
        """Whether ``found`` is loaded as it is on disk now, loading it when due."""
        loaded = entry.versions.get(found.version)
        if loaded is not None and loaded.identity == found.identity:
            if loaded.fingerprint != found.fingerprint:  # a file changed in place
                await self._recheck(entry, loaded, found)
            return True
        failure = entry.failed.get(found.version)
        if (
            failure is not None
            and failure.fingerprint == found.fingerprint
            and time.monotonic() < failure.retry_at
        ):
            return False
        mv = await self._load(entry, found, quiet=quiet)
        if mv is None:
            return False
        entry.versions[found.version] = mv
        if loaded is not None:  # the directory was replaced: the old model drains
            log.info("%s version %d changed on disk: reloaded", entry.name, found.version)
            self._drain(loaded)
        return True

    async def _recheck(self, entry: ModelEntry, loaded: ModelVersion, found: VersionOnDisk) -> None:
        """Verify a loaded version's files again after they changed in place (same manifest)."""
        failure = entry.failed.get(found.version)
        if failure is not None and failure.fingerprint == found.fingerprint:
            return  # reported already; nothing changed since
        try:  # (a daemon thread: a hung read must not hold up shutdown)
            await in_daemon_thread(verify_bundle, found.path)
        except Exception as exc:
            error = f"its files changed on disk after it was loaded: {exc}"
            retry_at = time.monotonic() + self.poll_s  # (only if it is unloaded and wanted again)
            entry.failed[found.version] = LoadFailure(error, found.fingerprint, 1, retry_at)
            what = "still serving the copy in memory, which a restart would not load"
            log.error("%s version %d: %s; %s", entry.name, found.version, exc, what)
            if self._on_load_failure is not None:
                self._on_load_failure(entry.name, found.version)
            return
        loaded.fingerprint = found.fingerprint
        if entry.failed.pop(found.version, None) is not None:
            log.info("%s version %d: its files verify again", entry.name, found.version)

    async def _load(
        self, entry: ModelEntry, found: VersionOnDisk, *, quiet: bool
    ) -> ModelVersion | None:
        name, version = entry.name, found.version
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            predictor = await loop.run_in_executor(None, load_and_warm, self._loader, found.path)
        except Exception as exc:  # a bad bundle must not take the server down
            self._record_failure(entry, found, exc, quiet=quiet)
            return None
        entry.failed.pop(version, None)

        on_batch = functools.partial(self._on_batch, name, version) if self._on_batch else None
        task = get_task(predictor.task)
        batcher: DynamicBatcher[str, TextResult] | GenerationQueue
        if task.generative and self._generation is not None:
            batcher = self._generation(predictor, name)
        else:
            batcher = DynamicBatcher(
                make_batch_fn(predictor),
                name=f"{name}-{version}",
                on_batch=on_batch,
                **self._batch_settings,  # type: ignore[arg-type]
            )
        await batcher.start()
        has_labels = task.has_classes
        num_scores = len(predictor.labels) if has_labels else 1
        log.info("loaded %s version %d in %.2f s", name, version, time.perf_counter() - t0)
        meta = (num_scores, has_labels, found.identity, found.fingerprint)
        return ModelVersion(name, version, predictor, batcher, *meta)

    def _record_failure(
        self, entry: ModelEntry, found: VersionOnDisk, exc: Exception, *, quiet: bool
    ) -> None:
        before = entry.failed.get(found.version)
        same_files = before is not None and before.fingerprint == found.fingerprint
        attempts = before.attempts + 1 if before is not None and same_files else 1
        wait = min(self.max_backoff_s, self.poll_s * 2 ** (attempts - 1))
        entry.failed[found.version] = LoadFailure(
            str(exc), found.fingerprint, attempts, time.monotonic() + wait
        )
        level = logging.WARNING if quiet else logging.ERROR
        log.log(
            level,
            "cannot load %s version %d (try %d, next in %d s): %s",
            entry.name,
            found.version,
            attempts,
            math.ceil(wait),
            exc,
        )
        if self._on_load_failure is not None:
            self._on_load_failure(entry.name, found.version)

    def _unload(self, entry: ModelEntry, version: int) -> None:
        mv = entry.versions.pop(version)
        if entry.served == version:
            entry.served = None
        self._drain(mv)
        log.info("unloaded %s version %d", entry.name, version)

    def _drain(self, mv: ModelVersion) -> None:
        # in the background: requests already queued on this version still get answers
        task = asyncio.get_running_loop().create_task(mv.batcher.stop(drain=True))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:  # keep polling through a transient filesystem error
                log.exception("repository poll failed")
