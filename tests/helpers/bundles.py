"""Shared helpers for the runtime and predict tests: tiny bundles without torch.

The graph is written by hand with ``onnx.helper`` (embedding, masked mean, linear head), so these
tests need neither torch nor a training run and take milliseconds. Exported torch models are
covered by ``test_export_onnx.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelyard.bundle import (
    Bundle,
    Manifest,
    PostProcess,
    TensorSpec,
    now_iso,
    write_bundle,
)
from modelyard.config import CleanConfig, TokenizerConfig
from modelyard.tasks import get_task
from modelyard.tokenize import build_tokenizer, tokenizer_info

TEXTS = [
    "a great film with a lovely cast",
    "a dull and boring film",
    "the best thing I have seen this year",
    "the worst plot and awful acting",
    "lovely music and great acting",
    "boring boring boring",
    "I would watch it again",
    "never again",
]
LABELS = {
    "binary": ["neg", "pos"],
    "multiclass": ["drama", "comedy", "horror"],
    "multilabel": ["music", "acting", "plot"],
    "regression": [],
}
NUM_OUTPUTS = {"binary": 1, "multiclass": 3, "multilabel": 3, "regression": 1}


def masked_mean_graph(vocab_size: int, num_outputs: int, dim: int = 8, seed: int = 0) -> bytes:
    """An ONNX graph ``(input_ids, attention_mask) -> logits``: masked mean of embeddings."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(vocab_size, dim)).astype(np.float32)
    weight = rng.normal(size=(dim, num_outputs)).astype(np.float32)
    bias = rng.normal(size=(num_outputs,)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"]),  # (B, T, D)
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),  # (B, T)
        helper.make_node("Unsqueeze", ["m", "axis_last"], ["m3"]),  # (B, T, 1)
        helper.make_node("Mul", ["x", "m3"], ["xm"]),
        helper.make_node("ReduceSum", ["xm", "axis_seq"], ["total"], keepdims=0),  # (B, D)
        helper.make_node("ReduceSum", ["m3", "axis_seq"], ["count"], keepdims=0),  # (B, 1)
        helper.make_node("Max", ["count", "one"], ["safe"]),
        helper.make_node("Div", ["total", "safe"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["z"]),  # (B, K)
        helper.make_node("Add", ["z", "bias"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(emb, "emb"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "masked_mean",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_outputs])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_bundle(
    repo: Path,
    task: str = "multiclass",
    *,
    name: str | None = None,
    max_length: int = 16,
    padding_side: str = "right",
    seed: int = 0,
    threshold: float = 0.5,
) -> Bundle:
    """Write a tiny bundle for ``task`` under ``repo`` (a new version on every call)."""
    tok = build_tokenizer(
        TokenizerConfig(
            kind="word", num_words=99, max_length=max_length, padding_side=padding_side
        ),
        CleanConfig(),
        TEXTS,
    )
    info = tokenizer_info(tok)
    tok_path = repo / f".tokenizer-{task}-{seed}.json"
    repo.mkdir(parents=True, exist_ok=True)
    tok.save(str(tok_path))
    num_outputs = NUM_OUTPUTS[task]
    manifest = Manifest(
        name=name or f"tiny-{task}",
        version=1,
        task=task,
        labels=LABELS[task],
        num_outputs=num_outputs,
        inputs=[
            TensorSpec(n, "int64", ["batch", "sequence"]) for n in ("input_ids", "attention_mask")
        ],
        outputs=[TensorSpec("logits", "float32", ["batch", num_outputs])],
        max_length=info.max_length,
        padding_side=info.padding_side,
        pad_id=info.pad_id,
        postprocess=PostProcess(activation=get_task(task).activation, threshold=threshold),
        config={"name": name or f"tiny-{task}", "task": task, "data": {"text": "text"}},
        modelyard_version="0.1.0",
        created_at=now_iso(),
    )
    graph = masked_mean_graph(info.vocab_size, num_outputs, seed=seed)
    bundle = write_bundle(repo, manifest, {"model.onnx": graph, "tokenizer.json": tok_path})
    tok_path.unlink()
    return bundle


def labelled_csv(path: Path) -> Path:
    """A binary CSV of :data:`TEXTS` (four times over) with alternating labels ``neg``/``pos``."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i, text in enumerate(TEXTS * 4):
            writer.writerow([text, "pos" if i % 2 else "neg"])
    return path
