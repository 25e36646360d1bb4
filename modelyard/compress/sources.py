"""What ``compress`` starts from: the fp32 reference bundle (a run's export, or a bundle), the
labelled texts every variant is scored on, and the calibration texts for static int8."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from modelyard.bundle import Bundle, Manifest, read_manifest, verify_bundle
from modelyard.compress.quantize import CalibrationData
from modelyard.config import REFERENCE_FORMAT, Config, validate_config
from modelyard.data import LabelSpace, load_splits, read_table
from modelyard.errors import BundleError, ConfigError, DataError
from modelyard.measure import LabelledTexts
from modelyard.runs import Run, is_run_dir
from modelyard.tokenize import encode
from modelyard.versions import list_versions

log = logging.getLogger("modelyard.compress")


@dataclass
class EvalData:
    """The labelled texts variants are selected on (``split``: validation, or a given file),
    the test texts they are reported on, and the training texts for calibration."""

    texts: list[str]
    targets: np.ndarray
    source: str
    train_texts: list[str] = field(default_factory=list)
    split: str = "file"
    test: LabelledTexts | None = None

    @property
    def described(self) -> str:
        return f"{self.source} ({self.split}, {len(self.texts)} texts)"


@dataclass
class FormatRequest:
    """What a format's variant builder is given.

    Attributes:
        run: the trained run.
        config: its config (``compress:`` says which variants, ``export.repo`` where they go).
        data: the texts variants are selected on (validation) and reported on (test).
        labels: the run's label names.
        reference: the fp32 reference's score (NaN while the reference itself is built).
        notes: what could not be built and why; builders append to it.
    """

    run: Run
    config: Config
    data: EvalData
    labels: list[str]
    reference: float = math.nan
    notes: list[str] = field(default_factory=list)


@dataclass
class Source:
    run: Run | None
    reference: Bundle
    config: Config | None
    repo: Path


def open_source(path: Path, repo: str | Path | None) -> Source:
    if is_run_dir(path):
        run = Run.load(path)
        target = Path(repo) if repo is not None else Path(run.config.export.repo)
        reference = run_reference(run, target)
        return Source(run, reference, run.config, target)
    bundle = fp32_bundle(path)
    config = manifest_config(bundle.manifest)
    target = Path(repo) if repo is not None else bundle.path.parent.parent
    return Source(None, bundle, config, target)


def is_plain_fp32(manifest: Manifest) -> bool:
    """True for a reference-format (ONNX) bundle nobody has pruned, clipped or quantized (a plain
    export): what compress starts from."""
    v = manifest.variant or {}
    return (
        manifest.format == REFERENCE_FORMAT
        and not v.get("quantization")
        and not v.get("pruning")
        and not v.get("clip")
    )


def fp32_bundle(path: Path) -> Bundle:
    """The named version, or the latest plain fp32 version of ``REPO/NAME``."""
    if (path / "manifest.json").is_file():
        bundle = verify_bundle(path)
        if not is_plain_fp32(bundle.manifest):
            raise BundleError(
                f"{path}: is a compressed variant ({bundle.manifest.variant.get('name')}); "
                "compress an fp32 ONNX bundle or its run"
            )
        return bundle
    for version in reversed(list_versions(path)):
        try:
            manifest = read_manifest(path / str(version))
        except BundleError:
            continue
        if is_plain_fp32(manifest):
            return verify_bundle(path, version)
    raise BundleError(f"{path}: no fp32 ONNX bundle (nor a run directory) to compress")


def manifest_config(manifest: Manifest) -> Config | None:
    if not manifest.config:
        return None
    try:
        return validate_config(dict(manifest.config), "manifest.json config")
    except ConfigError:
        return None


def run_reference(run: Run, repo: Path) -> Bundle:
    """An fp32 export of the run's best checkpoint: reused when one is newer than the
    checkpoint, else exported now."""
    name = run.config.name
    checkpoint = run.paths.weights("best")
    stamp = int(checkpoint.stat().st_mtime) if checkpoint.is_file() else None
    model_dir = repo / name
    for version in reversed(list_versions(model_dir)):
        try:
            manifest = read_manifest(model_dir / str(version))
        except BundleError:
            continue
        if (
            stamp is not None
            and is_plain_fp32(manifest)
            and (manifest.variant or {}).get("checkpoint", "best") == "best"
            and manifest.source is not None
            and Path(manifest.source).resolve() == run.dir.resolve()
            and _timestamp(manifest.created_at) >= stamp
        ):
            log.info("compress: reusing the fp32 export %s", model_dir / str(version))
            return verify_bundle(model_dir, version)
    log.info("compress: exporting %s to fp32 ONNX", run.dir)
    from modelyard.exporters import export  # torch: only a run needs it, not a bundle

    return export(run, repo=repo)


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return -math.inf


def eval_data(config: Config | None, manifest: Manifest, data: str | Path | None) -> EvalData:
    """The labelled texts variants are measured on, encoded in the bundle's label order.

    Args:
        config: the run's (or the bundle's recorded) config; ``None`` when unknown.
        manifest: the reference bundle's manifest.
        data: a labelled file; default: the config's test file, else its validation split.

    Raises:
        DataError: no data given and none in the config, or labels the bundle does not know.
    """
    if data is not None:
        data_cfg: dict[str, Any] = (manifest.config or {}).get("data") or {}
        table = read_table(
            data,
            text=data_cfg.get("text", "text"),
            label=data_cfg.get("label", "label"),
            encoding=data_cfg.get("encoding", "utf-8"),
        )
        space = LabelSpace(
            task=manifest.task,
            labels=list(manifest.labels),
            delimiter=data_cfg.get("label_delimiter"),
        )
        targets = space.encode(table.raw_labels or [], path=table.path, lines=table.lines)
        return EvalData(list(table.texts), targets, str(data), split="file")
    if config is None:
        raise DataError("no test data: the bundle records no config to find it in; pass data=FILE")
    splits = load_splits(config)
    if list(splits.labels.labels) != list(manifest.labels):
        raise DataError(
            f"the data's labels {splits.labels.labels} differ from the bundle's {manifest.labels}"
        )
    # select on validation, report on test: the numbers a user reads never picked the variant
    test = None
    if splits.test is not None:
        t = splits.test
        test = LabelledTexts(list(t.texts), t.targets, str(t.source), "test")
    v = splits.validation
    if not v.texts:
        raise DataError("no validation texts to select variants on: set data.validation_split > 0")
    return EvalData(
        list(v.texts),
        v.targets,
        str(v.source),
        list(splits.train.texts),
        split="validation",
        test=test,
    )


def calibration_data(src: Source, evaluation: EvalData, limit: int) -> CalibrationData:
    """A seeded sample of training texts, tokenized by the bundle's tokenizer."""
    texts = evaluation.train_texts
    if not texts and src.config is not None:
        texts = list(load_splits(src.config).train.texts)
    if not texts:
        raise DataError("int8-static needs training texts to calibrate on; none were found")
    seed = src.config.seed if src.config is not None else 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(texts), size=min(limit, len(texts)), replace=False)
    manifest = src.reference.manifest
    tokenizer = Tokenizer.from_file(str(src.reference.path / manifest.tokenizer_file))
    seqs = encode(tokenizer, [texts[i] for i in sorted(pick)])
    return CalibrationData.from_sequences(
        seqs,
        pad_id=manifest.pad_id,
        side=manifest.padding_side,
        input_names=[spec.name for spec in manifest.inputs],
    )
