"""The model repository: which models and versions are loaded, and hot reload of new versions.

The repository on disk is ``ROOT/NAME/VERSION/manifest.json`` (the bundle format). A version counts
once its ``manifest.json`` exists: the exporter writes into a hidden ``.tmp-*`` directory and
renames it into place, so a half-written bundle is never seen.

A background task polls the disk. When a model gets a newer version it is loaded and warmed off
the event loop, given its own batcher, and only then made the model's latest, so requests never
see a cold or half-loaded version. Requests already queued on the previous version finish there;
the last ``keep_versions`` versions stay loaded (reachable by explicit version) and older ones
are drained and dropped.

Requests are resolved against the in-memory table only: a model name from a URL never touches
the filesystem, so it cannot escape the repository directory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.serving.batcher import BatchInfo, DynamicBatcher
from modelyard.serving.inference import (
    Loader,
    PredictorLike,
    TextResult,
    default_loader,
    load_and_warm,
    make_batch_fn,
)
from modelyard.versions import is_rejected

log = logging.getLogger("modelyard.serving")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MANIFEST = "manifest.json"


class ModelNotFoundError(Exception):
    """Unknown model or version (404)."""


@dataclass
class ModelVersion:
    """One loaded, warmed version of a model with its own batcher."""

    name: str
    version: int
    predictor: PredictorLike
    batcher: DynamicBatcher[str, TextResult]
    num_scores: int
    has_labels: bool


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    latest: int | None = None
    on_disk: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it could not load


class ModelRepository:
    """Loaded models by name and version, kept in step with the repository directory.

    Args:
        root: the repository directory (``models/``).
        loader: loads one version directory into a predictor (default: ``modelyard.runtime``).
        max_batch_size, max_delay_ms, max_queue: batcher settings for every model version.
        poll_s: how often the directory is checked for new versions.
        keep_versions: how many versions of a model stay loaded.
        on_batch: metrics hook ``(model, version, info)``.
        on_change: called after the set of loaded versions changes (metrics).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        loader: Loader | None = None,
        max_batch_size: int = 64,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        poll_s: float = 2.0,
        keep_versions: int = 2,
        on_batch: Callable[[str, int, BatchInfo], None] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self._loader = loader or default_loader
        # a version directory never changes once renamed into place, so its manifest's
        # "rejected" mark is read once, not on every poll
        self._rejected: dict[Path, bool] = {}
        self._batch_settings = dict(
            max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue
        )
        self.poll_s = poll_s
        self.keep_versions = max(1, keep_versions)
        self._on_batch = on_batch
        self._on_change = on_change
        self.models: dict[str, ModelEntry] = {}
        self._poller: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self.started = False
        self.stopping = False

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self, *, poll: bool = True) -> None:
        """Load and warm the latest version of every model, then start polling for changes."""
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
        """Started, not stopping, and every model with a loadable version has one loaded."""
        if not self.started or self.stopping:
            return False
        return all(e.latest is not None for e in self.models.values() if e.on_disk)

    # -------------------------------------------------------------------------------- lookup
    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The loaded version to serve (latest when ``version`` is None).

        Raises:
            ModelNotFoundError: unknown model, or that version is not loaded.
            ValueError: ``version`` is not a positive integer.
        """
        entry = self.models.get(name)
        if entry is None or entry.latest is None:
            raise ModelNotFoundError(f"model {name!r} not found")
        if version is None:
            return entry.versions[entry.latest]
        v = parse_version(version)
        found = entry.versions.get(v)
        if found is None:
            loaded = ", ".join(str(x) for x in sorted(entry.versions))
            raise ModelNotFoundError(
                f"version {v} of model {name!r} is not loaded (loaded: {loaded})"
            )
        return found

    # ----------------------------------------------------------------------------- reloading
    def scan(self) -> dict[str, list[int]]:
        """Model name -> complete versions on disk (ascending)."""
        found: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not MODEL_NAME.match(model_dir.name):
                continue
            # rejected compression variants stay on disk but are never served
            versions = sorted(
                int(d.name)
                for d in model_dir.iterdir()
                if d.name.isdigit() and (d / MANIFEST).is_file() and not self._is_rejected(d)
            )
            found[model_dir.name] = versions
        return found

    def _is_rejected(self, version_dir: Path) -> bool:
        if version_dir not in self._rejected:
            self._rejected[version_dir] = is_rejected(version_dir)
        return self._rejected[version_dir]

    async def refresh(self) -> bool:
        """One pass: load new versions, drop versions and models gone from disk.

        Returns:
            Whether anything changed.
        """
        async with self._refresh_lock:
            loop = asyncio.get_running_loop()
            on_disk = await loop.run_in_executor(None, self.scan)
            changed = False
            for name, versions in on_disk.items():
                entry = self.models.setdefault(name, ModelEntry(name))
                entry.on_disk = versions
                newest = next((v for v in reversed(versions) if v not in entry.failed), None)
                if newest is not None and (entry.latest is None or newest > entry.latest):
                    changed |= await self._load(entry, newest)
                for v in [v for v in entry.versions if v not in versions]:
                    if v != entry.latest or len(entry.versions) > 1:
                        self._unload(entry, v)
                        changed = True
            for name in [n for n in self.models if n not in on_disk]:
                entry = self.models.pop(name)
                for v in list(entry.versions):
                    self._unload(entry, v)
                changed = True
            if changed and self._on_change is not None:
                self._on_change()
            return changed

    async def _load(self, entry: ModelEntry, version: int) -> bool:
        path = self.root / entry.name / str(version)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            predictor = await loop.run_in_executor(None, load_and_warm, self._loader, path)
        except Exception as exc:  # a bad bundle must not take the server down
            entry.failed[version] = str(exc)
            log.error("cannot load %s version %d: %s", entry.name, version, exc)
            return False
        name = entry.name

        def on_batch(info: BatchInfo) -> None:
            if self._on_batch is not None:
                self._on_batch(name, version, info)

        batcher: DynamicBatcher[str, TextResult] = DynamicBatcher(
            make_batch_fn(predictor),
            name=f"{name}-{version}",
            on_batch=on_batch,
            **self._batch_settings,  # type: ignore[arg-type]
        )
        await batcher.start()
        has_labels = predictor.task != "regression"
        num_scores = len(predictor.labels) if has_labels else 1
        entry.versions[version] = ModelVersion(
            name, version, predictor, batcher, num_scores, has_labels
        )
        # The swap: from here on new requests for the model go to this version.
        entry.latest = version
        log.info("loaded %s version %d in %.2f s", name, version, time.perf_counter() - t0)
        for old in sorted(entry.versions)[: -self.keep_versions]:
            self._unload(entry, old)
        return True

    def _unload(self, entry: ModelEntry, version: int) -> None:
        mv = entry.versions.pop(version)
        if entry.latest == version:
            entry.latest = max(entry.versions) if entry.versions else None
        # Drain in the background: requests already queued on this version still get answers.
        task = asyncio.get_running_loop().create_task(mv.batcher.stop(drain=True))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        log.info("unloaded %s version %d", entry.name, version)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception as exc:  # keep polling through a transient filesystem error
                log.error("repository poll failed: %s", exc)


def parse_version(version: str | int) -> int:
    """A version from a URL: a positive integer.

    Raises:
        ValueError: anything else.
    """
    if isinstance(version, int):
        v = version
    elif isinstance(version, str) and version.isdigit() and len(version) < 10:
        v = int(version)
    else:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    if v < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return v
