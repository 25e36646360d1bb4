"""The bundle: a versioned directory that turns raw text into predictions without training code.

A bundle lives at ``REPO/NAME/VERSION/`` and holds ``manifest.json``, the model graph
(``model.onnx``) and ``tokenizer.json``. Nothing is pickled. This module is torch-free: the runtime
and the server read and verify bundles with it.

Versions are integers and are never overwritten: a bundle is written into a hidden temporary
directory beside the versions, then renamed into place. ``rename`` is atomic and fails when the
target already holds a version, so two exporters racing for the same number cannot clobber each
other; the loser takes the next number.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from modelyard.errors import BundleError
from modelyard.generation_spec import GenerationSpec
from modelyard.staging import make_staging_dir, remove_stale_staging
from modelyard.tasks import TASKS
from modelyard.versions import (
    MANIFEST_FILE,
    VersionRef,
    locked,
    next_version,
    record_new_version,
    resolve_version,
)

SCHEMA_VERSION = 1
PaddingSide = Literal["left", "right"]
_MAX_RENAME_TRIES = 100


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (axis names are dynamic)."""

    name: str
    dtype: str
    shape: list[str | int]


@dataclass(frozen=True)
class PostProcess:
    """How raw model outputs become scores and labels.

    ``activation`` turns logits into scores (sigmoid, softmax or identity for regression);
    ``threshold`` decides the positive class (binary) and the label set (multilabel); ``top_k``
    caps how many class scores a prediction reports (``None``: all).
    """

    activation: str
    threshold: float = 0.5
    top_k: int | None = None


@dataclass(frozen=True)
class FileEntry:
    """Size in bytes and sha256 (hex) of one file in the bundle."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a bundle; stored as ``manifest.json``."""

    name: str
    version: int
    task: str
    labels: list[str]
    num_outputs: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_length: int
    padding_side: PaddingSide
    pad_id: int
    postprocess: PostProcess
    schema_version: int = SCHEMA_VERSION
    format: str = "onnx"
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    truncation_side: PaddingSide = "right"
    opset: int | None = None
    parity: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    variant: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    source: str | None = None
    modelyard_version: str = ""
    created_at: str = ""
    files: dict[str, FileEntry] = field(default_factory=dict)
    # generative bundles only (task ``generation``): how the model answers
    generation: GenerationSpec | None = None
    # sha256 over every other field (see manifest_digest): a manifest edited after export no longer
    # matches it. It guards against edits by hand and damage, not against someone who can
    # rewrite the digest too (that takes a signature).
    digest: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = MANIFEST_FILE) -> Manifest:
        """Validate and build a manifest read from JSON.

        Raises:
            BundleError: the schema version is unknown or newer than this modelyard supports,
                or a required field is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: expected a JSON object")
        schema = data.get("schema_version")
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise BundleError(f"{where}: missing or invalid schema_version {schema!r}")
        if schema > SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {schema} is newer than this modelyard supports "
                f"({SCHEMA_VERSION}); upgrade modelyard to load this bundle"
            )
        try:
            body = dict(data)
            body["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            body["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            body["postprocess"] = PostProcess(**data["postprocess"])
            body["files"] = {k: FileEntry(**v) for k, v in data.get("files", {}).items()}
            if data.get("generation") is not None:
                body["generation"] = GenerationSpec(**data["generation"])
            manifest = cls(**body)
        except (KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{where}: malformed manifest ({exc})") from None
        if manifest.digest and manifest.digest != manifest_digest(data):
            raise BundleError(
                f"{where}: edited after export (its digest does not match its content)"
            )
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        """Reject field values the runtime could misread into a wrong prediction."""
        problems = []
        task = TASKS.get(self.task)
        if task is None:
            problems.append(f"unknown task {self.task!r}")
        if not isinstance(self.version, int) or self.version < 1:
            problems.append(f"version must be a positive integer, got {self.version!r}")
        if not isinstance(self.labels, list) or not all(isinstance(x, str) for x in self.labels):
            problems.append("labels must be a list of strings")
        elif task is not None:
            problems += task.manifest_problems(self.labels, self.num_outputs)
        activation = self.postprocess.activation
        if task is not None and activation != task.activation:
            problems.append(
                f"activation {activation!r} does not fit task {self.task!r} "
                f"(expected {task.activation!r})"
            )
        threshold = self.postprocess.threshold
        if not _is_number(threshold) or not 0.0 < threshold < 1.0:
            problems.append(f"threshold must be a number between 0 and 1, got {threshold!r}")
        if not _is_int(self.pad_id) or self.pad_id < 0:
            problems.append(f"pad_id must be an integer >= 0, got {self.pad_id!r}")
        if self.max_length is not None and (not _is_int(self.max_length) or self.max_length < 1):
            problems.append(f"max_length must be a positive integer, got {self.max_length!r}")
        if self.padding_side not in ("left", "right"):
            problems.append(f"padding_side must be left or right, got {self.padding_side!r}")
        if task is not None and task.generative != (self.generation is not None):
            problems.append(
                f"a {self.task} bundle "
                + ("needs a generation section" if task.generative else "has no generation section")
            )
        if self.generation is not None:
            problems += self.generation.problems()
        for required in (self.model_file, self.tokenizer_file):
            if required not in self.files:
                problems.append(f"{required} is not listed in files")
        if problems:
            raise BundleError(f"{where}: " + "; ".join(problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def manifest_digest(data: Mapping[str, Any]) -> str:
    """sha256 of a manifest's fields other than ``digest``, as canonical JSON."""
    body = {k: v for k, v in data.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: where it is, its name and version, and its manifest."""

    path: Path
    name: str
    version: int
    manifest: Manifest


# ------------------------------------------------------------------------------ reading
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 (hex) of a file, read in chunks so large graphs do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_bundle_dir(path: str | Path, version: VersionRef | None = None) -> Path:
    """Find the version directory for ``path``.

    Args:
        path: ``REPO/NAME`` (a model with versions) or ``REPO/NAME/VERSION`` (one bundle).
        version: a version number or an alias of ``REPO/NAME``; ``None`` means the default
            version (see :func:`modelyard.versions.default_version`).

    Returns:
        The directory that holds ``manifest.json``.

    Raises:
        BundleError: the path does not exist, holds no versions, or lacks the asked version.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    if (root / MANIFEST_FILE).is_file():
        if version is not None and root.name != str(version):
            raise BundleError(f"{root}: is version {root.name}, not version {version}")
        return root
    return root / str(resolve_version(root, version))


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` (no checksum checks; see :func:`verify_bundle`)."""
    where = Path(bundle_dir) / MANIFEST_FILE
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{where}: missing; {where.parent} is not a complete bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: unreadable or not JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{where}: not JSON a manifest can be (nested too deep)") from None
    return Manifest.from_dict(data, where=str(where))


def verify_bundle(
    path: str | Path, version: VersionRef | None = None, *, task: str | None = None
) -> Bundle:
    """Find a bundle, validate its manifest and check every file's size and sha256.

    Args:
        path: ``REPO/NAME`` or ``REPO/NAME/VERSION``.
        version: a version number or alias of ``REPO/NAME``; ``None`` means the default.
        task: when given, the task the caller expects; another task is an error.

    Returns:
        The verified :class:`Bundle`.

    Raises:
        BundleError: missing or unreadable manifest, unknown schema version, a listed file
            missing, a size or checksum mismatch, or a task other than ``task``.
    """
    bundle_dir = resolve_bundle_dir(path, version)
    manifest = read_manifest(bundle_dir)
    if bundle_dir.name.isdigit() and bundle_dir.name != str(manifest.version):
        raise BundleError(
            f"{bundle_dir}: manifest says version {manifest.version}, but the bundle sits in "
            f"directory {bundle_dir.name}"
        )
    if bundle_dir.name.isdigit() and bundle_dir.parent.name != manifest.name:
        raise BundleError(
            f"{bundle_dir}: manifest is for model {manifest.name!r}, but the bundle sits under "
            f"{bundle_dir.parent.name!r}"
        )
    if task is not None and manifest.task != task:
        raise BundleError(f"{bundle_dir}: bundle is for task {manifest.task!r}, expected {task!r}")
    for name, entry in manifest.files.items():
        file = bundle_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{bundle_dir}: manifest lists a file outside the bundle: {name}")
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle")
        if not file.resolve().is_relative_to(bundle_dir.resolve()):
            # a symlink may point within its bundle only: a link out would serve files the
            # manifest's checksums were never meant to vouch for, and break when moved
            raise BundleError(f"{file}: a symlink out of the bundle (links may point inside it)")
        size = file.stat().st_size
        if size != entry.size:
            raise BundleError(f"{file}: corrupted (size {size} bytes, manifest says {entry.size})")
        if sha256_file(file) != entry.sha256:
            raise BundleError(f"{file}: corrupted (sha256 does not match the manifest)")
    return Bundle(path=bundle_dir, name=manifest.name, version=manifest.version, manifest=manifest)


# ------------------------------------------------------------------------------ writing
def generative_manifest(
    name: str,
    generation: GenerationSpec,
    *,
    format: str,
    model_file: str,
    pad_id: int = 0,
    metrics: dict[str, float] | None = None,
    variant: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    source: str | None = None,
    modelyard_version: str = "",
) -> Manifest:
    """The manifest of a generative bundle: one model file that holds its own tokenizer and chat
    template (a GGUF file), no labels and no tensors to describe; its version is claimed on write.
    """
    return Manifest(
        name=name,
        version=1,
        task="generation",
        labels=[],
        num_outputs=0,
        inputs=[],
        outputs=[],
        max_length=generation.context_length,
        padding_side="left",
        pad_id=pad_id,
        postprocess=PostProcess(activation="identity"),
        format=format,
        model_file=model_file,
        tokenizer_file=model_file,  # the tokenizer lives in the model file's metadata
        parity=parity,
        metrics=metrics,
        variant=variant or {},
        config=config,
        source=source,
        modelyard_version=modelyard_version,
        created_at=now_iso(),
        generation=generation,
    )


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, for ``created_at``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_bundle(
    repo: str | Path, manifest: Manifest, files: Mapping[str, str | Path | bytes]
) -> Bundle:
    """Write a new version of ``manifest.name`` under ``repo``, never touching an old version.

    The files are copied into ``repo/NAME/.tmp-PID-XXXX``, their sizes and sha256 recorded in the
    manifest, and the directory renamed to the next free version. A rename that loses a race to
    another exporter retries with the following number.

    Args:
        repo: the model repository (``models``).
        manifest: the manifest to store; ``version`` and ``files`` are filled in here.
        files: bundle file name -> source path or bytes; must include the manifest's
            ``model_file`` and ``tokenizer_file``.

    Returns:
        The written :class:`Bundle`.

    Raises:
        BundleError: a required file is missing from ``files``, or no version could be claimed.
    """
    for required in (manifest.model_file, manifest.tokenizer_file):
        if required not in files:
            raise BundleError(f"cannot write bundle {manifest.name!r}: {required} not given")
    model_dir = Path(repo) / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(model_dir)
    tmp = make_staging_dir(model_dir)
    try:
        entries: dict[str, FileEntry] = {}
        for name, source in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
            entries[name] = FileEntry(size=target.stat().st_size, sha256=sha256_file(target))
        # mkdtemp makes the directory 0700; a bundle is meant to be read by a server process
        os.chmod(tmp, 0o755)
        return _claim_version(tmp, model_dir, replace(manifest, files=entries))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _claim_version(tmp: Path, model_dir: Path, manifest: Manifest) -> Bundle:
    # under the model's lock: the number is past every version ever claimed, so a deleted
    # version's number never comes back; another writer cannot take it meanwhile
    with locked(model_dir):
        for _ in range(_MAX_RENAME_TRIES):
            version = next_version(model_dir)
            manifest = replace(manifest, version=version, digest="")
            manifest = replace(manifest, digest=manifest_digest(manifest.to_dict()))
            (tmp / MANIFEST_FILE).write_text(
                json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
            target = model_dir / str(version)
            try:
                os.rename(tmp, target)
            except OSError:
                # a directory of that number appeared by hand: take the next one
                if not target.exists():
                    raise
                continue
            record_new_version(model_dir, version)
            return Bundle(path=target, name=manifest.name, version=version, manifest=manifest)
    raise BundleError(f"{model_dir}: could not claim a new version after {_MAX_RENAME_TRIES} tries")


def parse_side(value: str) -> PaddingSide:
    """``left`` or ``right`` as the manifest stores it; anything else is a bundle error."""
    if value == "left":
        return "left"
    if value == "right":
        return "right"
    raise BundleError(f"tokenizer.json: unknown padding/truncation side {value!r}")
