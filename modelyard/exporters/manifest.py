"""What every exported bundle's manifest says about its run: tokenizer facts, tensors, labels.

The ONNX and LiteRT exporters differ in the graph and its shapes; the rest of the manifest comes
from the run the same way, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

import modelyard
from modelyard.bundle import (
    Manifest,
    PaddingSide,
    PostProcess,
    TensorSpec,
    now_iso,
    parse_side,
)
from modelyard.runs import Run
from modelyard.tasks import get_task
from modelyard.tokenize import tokenizer_info

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class RunTokenizer:
    """A run's ``tokenizer.json`` and the facts a bundle records about it."""

    path: Path
    tokenizer: Tokenizer
    vocab_size: int
    pad_id: int
    max_length: int
    padding_side: PaddingSide
    truncation_side: PaddingSide

    @classmethod
    def of(cls, run: Run) -> RunTokenizer:
        path = run.dir / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(path))
        info = tokenizer_info(tokenizer)
        return cls(
            path=path,
            tokenizer=tokenizer,
            vocab_size=int(info.vocab_size),
            pad_id=int(info.pad_id),
            max_length=int(info.max_length or run.config.tokenizer.max_length),
            padding_side=parse_side(info.padding_side),
            truncation_side=parse_side(info.truncation_side),
        )


def run_manifest(
    run: Run,
    tok: RunTokenizer,
    *,
    name: str | None,
    format: str,
    model_file: str,
    input_dtypes: dict[str, str],
    input_shape: list[str | int],
    batch_axis: str | int,
    opset: int | None,
    variant: dict[str, Any],
    metrics: dict[str, float] | None,
    parity: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a bundle exported from ``run`` (its version is claimed on write)."""
    config = run.config
    num_outputs = run.labels.num_outputs
    return Manifest(
        name=name or config.name,
        version=1,  # the real number is claimed when the bundle is renamed into place
        task=config.task,
        labels=list(run.labels.labels),
        num_outputs=num_outputs,
        inputs=[TensorSpec(n, input_dtypes[n], list(input_shape)) for n in INPUT_NAMES],
        outputs=[TensorSpec(OUTPUT_NAME, "float32", [batch_axis, num_outputs])],
        max_length=tok.max_length,
        padding_side=tok.padding_side,
        truncation_side=tok.truncation_side,
        pad_id=tok.pad_id,
        postprocess=PostProcess(activation=get_task(config.task).activation),
        format=format,
        model_file=model_file,
        opset=opset,
        parity=parity,
        metrics=metrics,
        variant=variant,
        config=config.model_dump(mode="json"),
        source=str(run.dir),
        modelyard_version=modelyard.__version__,
        created_at=now_iso(),
    )
