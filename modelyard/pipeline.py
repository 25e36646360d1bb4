"""The whole road in one call: ``modelyard run config.yaml``.

train → evaluate → each format's variants, measured (the reference ONNX export and what
``compress:`` asks for first, then each other format the config names; a generation config's
GGUF types, scored against the run itself; built by :data:`modelyard.compress.FORMAT_VARIANTS`)
→ choose one variant per deployment target → ``runs/NAME/variants.json`` and ``report.html``.

Every station is the public API of its package; this module only strings them together, collects
the measurements and writes the report. A format that cannot be built here (TFLite without
litert-torch) becomes a note in the report rather than a crash, so the other targets still get
their answer.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.choice import Choice, choose
from modelyard.compress.formats import FORMAT_VARIANTS, FormatRequest, wanted_formats
from modelyard.compress.sources import EvalData
from modelyard.errors import BundleError, ModelyardError
from modelyard.measure import LabelledTexts, Measurement, format_test_score
from modelyard.metrics import finite_or_none, higher_is_better
from modelyard.tasks import get_task

if TYPE_CHECKING:
    from modelyard.config import Config
    from modelyard.training import Run

log = logging.getLogger("modelyard.pipeline")

GENERATIVE_NOTE = (
    "generative variants: the score is the answers' perplexity through llama.cpp on the "
    "validation records (drop: % above the run's own in torch); p50/p99 ms are the time to the "
    "first token, throughput is decode tokens/s of one stream"
)
VARIANTS_FILE = "variants.json"
REPORT_FILE = "report.html"
TRADEOFF_FILE = "variants.png"


@dataclass
class PipelineResult:
    """What ``run`` built, measured and chose.

    Attributes:
        run: the trained run.
        variants: every measured variant, the fp32 reference first.
        choices: target name -> :class:`~modelyard.choice.Choice`.
        report_path: ``runs/NAME/report.html``.
        variants_path: ``runs/NAME/variants.json``.
        metric: the primary metric variants are scored by.
        notes: what could not be built and why (e.g. litert-torch missing).
    """

    run: Run
    variants: list[Measurement]
    choices: dict[str, Choice]
    report_path: Path
    variants_path: Path
    metric: str
    notes: list[str] = field(default_factory=list)
    test_metric: str = ""  # the variants' test column (default: metric)

    def summary(self) -> str:
        """A short plain-text table of the variants and the choice per target."""
        return format_summary(
            self.variants, self.choices, self.metric, self.notes, test_metric=self.test_metric
        )


def run_pipeline(config: Config, *, overwrite: bool = False, echo: bool = True) -> PipelineResult:
    """Walk the whole road for a config and pick a variant per deployment target.

    Args:
        config: the resolved config (:func:`modelyard.config.load_config`); ``compress:``
            says which variants to build, ``export.formats`` and ``targets:`` which formats.
        overwrite: replace an existing run directory of the same name (bundles are never
            overwritten: each variant is a new version in ``export.repo``).
        echo: print the variants table and the choices when done.

    Returns:
        A :class:`PipelineResult`.

    Raises:
        RunError: the run directory exists and ``overwrite`` is false.
        ConfigError, DataError, BundleError: from the stations.
    """
    from modelyard.training import train

    task = get_task(config.task)
    metric = task.variant_metric
    higher = higher_is_better(metric)
    notes: list[str] = []
    if task.generative:
        notes.append(GENERATIVE_NOTE)

    log.info("run %s: training", config.name)
    run = train(config, overwrite=overwrite)
    data = _generation_data(config) if task.generative else _measure_data(config)
    images = _evaluation_images(run, data.test.source if data.test else data.source)
    labels = list(run.labels.labels)

    # the reference format first: every later variant is measured against its fp32 score
    variants: list[Measurement] = []
    for fmt in wanted_formats(config):
        reference_score = variants[0].score if variants else math.nan
        request = FormatRequest(run, config, data, labels, reference_score, notes)
        variants += FORMAT_VARIANTS[fmt](request)
    if not variants:
        raise BundleError(f"run {config.name}: no variant was built: " + "; ".join(notes))
    reference = variants[0]

    choices = choose(config.targets, variants, higher_is_better=higher)
    _point_aliases(choices, notes)
    variants_path = _write_variants(run, variants, choices, metric, reference.score, notes)
    report_path = _write_report(run, config, data, variants, choices, metric, images, notes)
    result = PipelineResult(
        run, variants, choices, report_path, variants_path, metric, notes, task.primary_metric
    )
    if echo:
        print(result.summary())
        print(f"report: {report_path}")
    return result


# -------------------------------------------------------------------------------------- stations
def _evaluation_images(run: Run, source: str) -> dict[str, Path]:
    """Learning curves and confusion matrix; evaluate on the validation split when the config
    has no test file (training only evaluates a test file)."""
    eval_dir = run.paths.eval_dir
    if get_task(run.task).has_confusion and not (eval_dir / "confusion_matrix.png").is_file():
        from modelyard.training.evaluation import evaluate

        evaluate(run)
    images = {}
    for caption, file in (
        ("Learning curves", "learning_curves.png"),
        (f"Confusion matrix: the trained model on {Path(source).name}", "confusion_matrix.png"),
    ):
        if (eval_dir / file).is_file():
            images[caption] = eval_dir / file
    return images


def _measure_data(config: Config) -> EvalData:
    """Select on the validation split, report on the test file: the split the choice was made
    on is never the one its numbers are reported on."""
    from modelyard.data import load_splits

    splits = load_splits(config)
    test = None
    if splits.test is not None:
        t = splits.test
        test = LabelledTexts(list(t.texts), t.targets, str(t.source), "test")
    v = splits.validation
    return EvalData(list(v.texts), v.targets, str(v.source), split="validation", test=test)


def _generation_data(config: Config) -> EvalData:
    """A generation run's validation records, for the record of what variants were selected
    on (each GGUF export reads and scores them itself: perplexity, parity, timing)."""
    import numpy as np

    from modelyard.training.generative import read_records

    validation = read_records(config).validation
    source = config.data.validation or f"{config.data.train} (held out)"
    texts = [c.messages[-1]["content"] if c.messages else str(c.text) for c in validation]
    return EvalData(texts, np.empty(0), source, split="validation")


def _point_aliases(choices: dict[str, Choice], notes: list[str]) -> None:
    """Point each target's alias (``server``, ``edge``, ``mobile``) at its chosen version, so a
    server following ``server`` answers from exactly what was chosen for it."""
    from modelyard.versions import set_alias

    for target, choice in choices.items():
        if choice.variant is None:
            continue
        try:
            set_alias(Path(choice.variant.bundle).parent, target, choice.variant.version)
        except ModelyardError as exc:
            notes.append(f"target {target}: chosen, but no alias points at it: {exc}")


# ----------------------------------------------------------------------------------------- files
def _write_variants(
    run: Run,
    variants: list[Measurement],
    choices: dict[str, Choice],
    metric: str,
    reference: float,
    notes: list[str],
) -> Path:
    path = run.dir / VARIANTS_FILE
    payload: dict[str, Any] = {
        "run": run.config.name,
        "task": run.task,
        "metric": metric,
        "higher_is_better": higher_is_better(metric),
        "reference": finite_or_none(reference),
        "variants": [m.to_dict() for m in variants],
        "choices": {name: c.to_dict() for name, c in choices.items()},
        "notes": notes,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=finite_or_none) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _write_report(
    run: Run,
    config: Config,
    data: EvalData,
    variants: list[Measurement],
    choices: dict[str, Choice],
    metric: str,
    images: dict[str, Path],
    notes: list[str],
) -> Path:
    from modelyard.report.html import ReportContent, write_report
    from modelyard.report.tradeoff import variants_plot

    tradeoff = variants_plot(
        variants,
        choices,
        run.paths.eval_dir / TRADEOFF_FILE,
        metric=metric,
        title=f"{config.name}: {metric} vs p99 latency (marker area ∝ size)",
    )
    sources = {"train": config.data.train}
    if config.data.validation:
        sources["validation"] = config.data.validation
    sources["variants selected on"] = data.described
    if data.test is not None:
        sources["variants reported on"] = f"{data.test.source} (test, {len(data.test.texts)} texts)"
    content = ReportContent(
        name=config.name,
        task=str(config.task),
        metric=metric,
        data=sources,
        test_metrics=run.test_metrics,
        variants=variants,
        choices=choices,
        targets=config.targets,
        tradeoff_png=tradeoff,
        images=images,
        notes=notes,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        run_dir=str(run.dir),
        higher_is_better=higher_is_better(metric),
        test_size=run.test_size,
        test_metric=get_task(config.task).primary_metric,
    )
    return write_report(content, run.dir / REPORT_FILE)


# --------------------------------------------------------------------------------------- summary
def format_summary(
    variants: list[Measurement],
    choices: dict[str, Choice],
    metric: str,
    notes: list[str],
    *,
    test_metric: str = "",
) -> str:
    """The variants as a fixed-width table, then one line per target."""
    width = max([len("variant"), *(len(m.name) for m in variants)])
    test_metric = test_metric or metric
    lines = [
        f"{'variant':<{width}}  {'format':<6}  {'size MB':>8}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'texts/s':>8}  {'val ' + metric:>13}  {'drop':>6}  {'test ' + test_metric:>22}  status"
    ]
    for m in variants:
        status = f"rejected: {m.rejected}" if m.rejected else "ok"
        lines.append(
            f"{m.name:<{width}}  {m.format:<6}  {m.size_mb:>8.3g}  {m.p50_ms:>7.2f}  "
            f"{m.p99_ms:>7.2f}  {m.throughput:>8.0f}  {m.score:>13.4f}  {m.drop:>6.2f}  "
            f"{format_test_score(m, test_metric):>22}  {status}"
        )
    if choices:
        lines.append("")
        name_w = max(len(t) for t in choices)
        for target, choice in choices.items():
            if choice.variant is not None:
                v = choice.variant
                picked = f"{v.name} ({v.bundle}; alias {target} -> version {v.version})"
            else:
                picked = "none: " + choice.reason.removeprefix(f"{target}: ")
            lines.append(f"{target:<{name_w}}  -> {picked}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
