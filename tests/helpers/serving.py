"""Shared helpers for the serving tests: a toy predictor and a tiny real bundle (no torch).

The real bundle is a hand-built ONNX graph (embedding, masked mean pooling, linear layer) with a
word-level tokenizer, written with the real bundle writer, so the server's integration tests run
the real runtime without training anything.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

LABELS = ["neg", "pos", "mixed"]
WORDS = ["good", "bad", "film", "great", "awful", "plot", "actor", "boring", "fun", "the"]


# ------------------------------------------------------------------------------- toy predictor
@dataclass(frozen=True)
class ToyPrediction:
    label: str | None
    score: float
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


class ToyPredictor:
    """Same methods as modelyard.runtime.Predictor; each text's score depends on it alone.

    ``gate`` (a threading.Event) holds every batch until set; ``fail_on`` makes a batch that
    contains that text raise.
    """

    def __init__(
        self,
        name: str = "toy",
        version: int = 1,
        *,
        gate: threading.Event | None = None,
        fail_on: str | None = None,
        error: type[Exception] = RuntimeError,
        task: str = "multiclass",
    ) -> None:
        self.name, self.version, self.task = name, version, task
        self.labels = [] if task == "regression" else list(LABELS)
        self.gate, self.fail_on, self.error = gate, fail_on, error
        self.warmed = False
        self.batches: list[int] = []

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if self.fail_on is not None and self.fail_on in texts:
            raise self.error("toy failure")
        return [[len(w) for w in t.split()] or [1] for t in texts]

    def infer(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(len(seqs))
        if self.task == "regression":
            return np.array([[float(sum(s))] for s in seqs], dtype=np.float32)
        logits = np.array([[sum(s) % 5, len(s) % 3, self.version] for s in seqs], dtype=np.float32)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def postprocess(self, scores: np.ndarray) -> list[ToyPrediction]:
        if self.task == "regression":
            return [ToyPrediction(None, float(r[0])) for r in scores]
        out = []
        for row in scores:
            top = int(np.argmax(row))
            out.append(
                ToyPrediction(
                    self.labels[top],
                    float(row[top]),
                    dict(zip(self.labels, map(float, row), strict=True)),
                )
            )
        return out

    def predict(self, texts: Sequence[str]) -> list[ToyPrediction]:
        return self.postprocess(self.infer(self.encode(texts)))

    def warmup(self) -> None:
        self.warmed = True


def toy_repo(root: Path, models: dict[str, list[int]]) -> Path:
    """Version directories with an (empty) manifest, enough for the toy loader."""
    for name, versions in models.items():
        for v in versions:
            add_toy_version(root, name, v)
    return root


def add_toy_version(root: Path, name: str, version: int, manifest: str = "{}") -> None:
    d = root / name / str(version)
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(manifest)


def toy_loader(path: Path) -> ToyPredictor:
    return ToyPredictor(path.parent.name, int(path.name))


# ----------------------------------------------------------------------------- real bundle
def build_real_bundle(repo: Path, name: str = "tiny", seed: int = 13) -> Path:
    """Write a new version of a tiny real bundle (ONNX + tokenizer.json) under ``repo``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    from modelyard.bundle import Manifest, PostProcess, TensorSpec, write_bundle

    vocab = {"<PAD>": 0, "<OOV>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<OOV>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_truncation(max_length=32)
    tok.enable_padding(pad_id=0, pad_token="<PAD>")

    rng = np.random.default_rng(seed)
    dim, classes = 8, len(LABELS)
    emb = rng.normal(size=(len(vocab), dim)).astype(np.float32)
    w = rng.normal(size=(dim, classes)).astype(np.float32)
    b = rng.normal(size=(classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("ReduceSum", ["em", "ax1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["mf", "ax1"], ["cnt"], keepdims=1),
        helper.make_node("Max", ["cnt", "one"], ["cnt1"]),
        helper.make_node("Div", ["s", "cnt1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(emb, "emb"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ax2"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    manifest = Manifest(
        name=name,
        version=1,
        task="multiclass",
        labels=list(LABELS),
        num_outputs=classes,
        inputs=[
            TensorSpec(n, "int64", ["batch", "sequence"]) for n in ("input_ids", "attention_mask")
        ],
        outputs=[TensorSpec("logits", "float32", ["batch", classes])],
        max_length=32,
        padding_side="right",
        pad_id=0,
        postprocess=PostProcess(activation="softmax"),
        opset=18,
    )
    bundle = write_bundle(
        repo,
        manifest,
        {"model.onnx": model.SerializeToString(), "tokenizer.json": tok.to_str().encode()},
    )
    return bundle.path


# ------------------------------------------------------------------------------ server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``python -m modelyard.serving`` on a free port; waits for /v2/health/ready (bounded)."""

    def __init__(
        self,
        repo: Path,
        *args: str,
        deadline_s: float = 30.0,
        command: Callable[[int], list[str]] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if command is None:  # the module's own CLI, quiet
            argv = [sys.executable, "-m", "modelyard.serving", str(repo), "--port", str(self.port)]
            argv += ["--log-level", "warning", *args]
        else:  # another way in (``modelyard serve ...``), given the port
            argv = command(self.port)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.wait_ready(deadline_s)

    def wait_ready(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{out}")
                try:
                    if client.get(self.url + "/v2/health/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                # the server is still starting; poll again (bounded by the deadline)
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("server not ready in time")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
