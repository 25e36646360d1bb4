"""Inference speed: torch eager vs the bundle's ONNX Runtime path, per model kind, in one run.

For each model kind it trains the seed recipe on the food reviews for one epoch (weights do not
change speed), exports the bundle, then measures on real test texts, tokenization included:

- latency at batch 1 (p50 / p99 over ``--requests`` single-text calls),
- throughput at batch 32 (texts/s over the whole test set, 32 texts per call).

Both paths use the same tokenizer.json and the same number of threads. The two paths alternate
call by call so that noise from a shared machine hits both alike.

    .venv/bin/python bench/inference.py --kinds lstm gru cnn transformer --threads 1
    .venv/bin/python bench/inference.py --configs examples/linear_ngrams.yaml \
        examples/bag_of_ngrams.yaml --threads 1     # example configs as they are, 1 epoch
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from seed_kinds import MODELS  # bench/ is on sys.path when this script runs

import modelyard
from modelyard.config import load_config
from modelyard.exporters import export
from modelyard.runtime import load
from modelyard.tokenize import encode, load_tokenizer, pad_batch, tokenizer_info
from modelyard.training import Run, load_model

ROOT = Path(__file__).resolve().parents[1]


def torch_predictor(run: Run) -> Callable[[Sequence[str]], np.ndarray]:
    """The eager path as a user would write it: tokenize, pad, forward, activation."""
    model = load_model(run, "best")
    tok = load_tokenizer(run.dir / "tokenizer.json")
    info = tokenizer_info(tok)
    activation = (
        torch.sigmoid if run.config.task in ("binary", "multilabel") else torch.nn.Identity()
    )

    def predict(texts: Sequence[str]) -> np.ndarray:
        batch = pad_batch(encode(tok, texts), pad_id=info.pad_id, side=info.padding_side)
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch.ids), torch.from_numpy(batch.mask))
            return np.asarray(activation(logits))

    return predict


def measure(
    paths: dict[str, Callable[[Sequence[str]], np.ndarray]], texts: list[str], requests: int
) -> dict[str, dict[str, float]]:
    lat: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():  # warm up
        fn(texts[:1])
        fn(texts[:32])
    for i in range(requests):
        text = [texts[i % len(texts)]]
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn(text)
            lat[name].append((time.perf_counter() - t0) * 1000)
    thr_time = dict.fromkeys(paths, 0.0)
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn(chunk)
            thr_time[name] += time.perf_counter() - t0
    return {
        name: {
            "p50_ms": float(np.percentile(lat[name], 50)),
            "p99_ms": float(np.percentile(lat[name], 99)),
            "throughput": len(texts) / thr_time[name],
        }
        for name in paths
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "seed.yaml"))
    parser.add_argument("--kinds", nargs="+", default=["lstm", "gru", "cnn", "transformer"])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    parser.add_argument("--configs", nargs="+", default=[],
                        help="config files measured as they are, instead of --kinds")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # (row name, config file, its model override)
        runs = [(kind, args.config, [f"model={MODELS[kind]}"]) for kind in args.kinds]
        if args.configs:
            runs = [(Path(path).stem, path, []) for path in args.configs]
        for kind, path, model in runs:
            config = load_config(
                path,
                [
                    *model,
                    "train.epochs=1",
                    "train.progress=false",
                    "train.monitor=val_loss",
                    f"output_dir={tmp}/runs",
                    f"name=bench-{kind}",
                ],
            )
            run = modelyard.train(config, overwrite=True)
            bundle = export(run, repo=f"{tmp}/models")
            ort_predictor = load(bundle.path, intra_op_threads=args.threads, inter_op_threads=1)
            assert config.data.test is not None
            texts = [line for line in _test_texts(config.data.test)]
            result = measure(
                {"torch": torch_predictor(run), "onnx": ort_predictor.predict},
                texts,
                args.requests,
            )
            rows.append((kind, result))
    print(
        f"\nbatch-1 latency and batch-32 throughput, tokenization included, threads {args.threads}"
    )
    print(
        f"{'kind':<12} {'path':<6} {'p50 ms':>7} {'p99 ms':>7} {'texts/s@32':>11}"
        f" {'p50 speedup':>12} {'thr speedup':>12}"
    )
    for kind, result in rows:
        ref = result["torch"]
        for name, r in result.items():
            print(
                f"{kind:<12} {name:<6} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f}"
                f" {r['throughput']:>11.0f} {ref['p50_ms'] / r['p50_ms']:>11.2f}x"
                f" {r['throughput'] / ref['throughput']:>11.2f}x"
            )


def _test_texts(path: str) -> list[str]:
    from modelyard.data import read_table

    return read_table(path, label=None).texts


if __name__ == "__main__":
    main()
