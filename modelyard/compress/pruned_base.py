"""The pruned base: prune (and fine-tune) the run's torch model, export it with the same parity
gate as any export, then write and measure it; quantized variants build on its graph."""

from __future__ import annotations

import logging
from pathlib import Path

from modelyard.compress.prune import finetune, prune_model
from modelyard.compress.sources import EvalData, Source
from modelyard.compress.write import Base, VariantSettings, variant_record, write_variant
from modelyard.errors import ConfigError
from modelyard.exporters.manifest import RunTokenizer
from modelyard.exporters.onnx import export_checked_graph, parity_record
from modelyard.measure import Measurement
from modelyard.training import load_model

log = logging.getLogger("modelyard.compress")


def pruned_base(
    src: Source,
    amount: float,
    kind: str,
    finetune_epochs: int,
    evaluation: EvalData,
    settings: VariantSettings,
    work: Path,
) -> tuple[Base, Measurement]:
    """Prune (and fine-tune) the run's model, export it, check parity, write and measure it."""
    run = src.run
    if run is None:  # checked by compress(); keeps the type checker informed
        raise ConfigError("pruning needs a training run")
    result = prune_model(load_model(run, "best"), amount, kind)
    finetune(result, run, finetune_epochs)
    result.model.eval()
    report = result.report
    log.info("compress: pruned %s (%s), sparsity %.3f", run.dir, kind, report.sparsity)
    graph_dir = work / f"pruned-{kind}"
    graph_dir.mkdir()
    graph = graph_dir / "model.onnx"
    report_parity = export_checked_graph(
        result.model, run, RunTokenizer.of(run), graph, what="pruned model's ONNX export"
    )
    parity = {
        **parity_record(report_parity),
        "compared": "raw outputs, pruned torch model vs onnxruntime (CPU)",
    }
    name = f"pruned{round(amount * 100)}" + ("-structured" if kind == "structured" else "")
    variant = variant_record(src, name, pruning=report.to_dict())
    measured = write_variant(src, graph, variant, parity, evaluation, settings)
    return Base(name, graph, measured.version, report.to_dict()), measured
