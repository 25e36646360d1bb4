"""Training throughput of the seed recipe: length buckets on vs off vs the plain way, in one run.

Three ways to train the same model (Embedding 128 → LSTM 64 → Dense 1, Adam 1e-3, BCE, batch 32)
on the same split and tokenizer of the shipped food reviews:

- ``bucketed``: ``modelyard.train`` with length-bucketed batches padded to the batch's longest text;
- ``fixed``:    ``modelyard.train`` with ``train.bucketing=false`` (every batch padded to 100);
- ``plain``:    the model written the plain (Keras) way in PyTorch: pre-padded to 100, no masking,
                the LSTM's last time step into the head. The reference.

It prints samples/second (training steps only), seconds per epoch and test accuracy / macro-F1,
with ratios against ``plain``. The variants run interleaved epoch by epoch is not possible with
the library loop, so they run one after another in the same process; run it on a quiet machine.

    .venv/bin/python bench/train_throughput.py --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import modelyard
from modelyard.config import load_config
from modelyard.data import load_splits
from modelyard.metrics import compute_metrics
from modelyard.tokenize import build_tokenizer, encode, pad_batch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    name: str
    samples_per_s: float
    epoch_s: float
    test_accuracy: float
    test_macro_f1: float


def run_modelyard(name: str, config_path: Path, epochs: int, bucketing: bool, out: Path) -> Result:
    config = load_config(
        config_path,
        [
            f"train.epochs={epochs}",
            f"train.bucketing={str(bucketing).lower()}",
            f"output_dir={out}",
            f"name=bench-{name}",
            "train.progress=false",
            "train.monitor=val_loss",
        ],
    )
    run = modelyard.train(config, overwrite=True)
    epoch_s = [float(h["epoch_time_s"]) for h in run.history]
    seen = [float(h["samples_per_s"]) * float(h["epoch_time_s"]) for h in run.history]
    metrics = run.test_metrics or {}
    return Result(
        name,
        samples_per_s=sum(seen) / sum(epoch_s),
        epoch_s=float(np.mean(epoch_s)),
        test_accuracy=float(metrics.get("accuracy", float("nan"))),
        test_macro_f1=float(metrics.get("macro_f1", float("nan"))),
    )


class PlainLSTM(nn.Module):
    """The Keras recipe as most people write it in PyTorch: no mask, last time step."""

    def __init__(self, vocab: int, emb: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))  # (B, T, H)
        return self.head(out[:, -1]).squeeze(-1)  # (B,)


def run_plain(config_path: Path, epochs: int) -> Result:
    config = load_config(config_path)
    torch.manual_seed(config.seed)
    splits = load_splits(config)
    tok = build_tokenizer(config.tokenizer, config.data.clean, splits.train.texts)
    length = config.tokenizer.max_length
    side = config.tokenizer.padding_side

    def tensors(texts: list[str]) -> torch.Tensor:
        padded = pad_batch(encode(tok, texts), side=side, length=length)
        return torch.from_numpy(padded.ids)

    x_train, y_train = tensors(splits.train.texts), torch.from_numpy(splits.train.targets)
    assert splits.test is not None
    x_test = tensors(splits.test.texts)
    model = PlainLSTM(tok.get_vocab_size(), 128, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(config.seed)
    batch = config.train.batch_size
    times = []
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        t0 = time.perf_counter()
        for start in range(0, len(order), batch):
            idx = torch.from_numpy(order[start : start + batch])
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(
            torch.cat([model(x_test[i : i + 256]) for i in range(0, len(x_test), 256)])
        )
    metrics = compute_metrics("binary", splits.test.targets, probs.numpy(), splits.labels.labels)
    return Result(
        "plain",
        samples_per_s=len(x_train) * epochs / sum(times),
        epoch_s=float(np.mean(times)),
        test_accuracy=float(metrics["accuracy"]),
        test_macro_f1=float(metrics["macro_f1"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "seed.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    config_path = Path(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            run_plain(config_path, args.epochs),
            run_modelyard("fixed", config_path, args.epochs, False, Path(tmp)),
            run_modelyard("bucketed", config_path, args.epochs, True, Path(tmp)),
        ]
    ref = results[0]
    print(f"\nseed recipe, {args.epochs} epochs, torch threads {torch.get_num_threads()}")
    head = ("variant", "samples/s", "s/epoch", "vs plain", "test acc", "macro-F1")
    print("{:<10} {:>10} {:>8} {:>9} {:>9} {:>9}".format(*head))
    for r in results:
        print(
            f"{r.name:<10} {r.samples_per_s:>10.0f} {r.epoch_s:>8.2f} "
            f"{r.samples_per_s / ref.samples_per_s:>8.2f}x "
            f"{r.test_accuracy:>9.4f} {r.test_macro_f1:>9.4f}"
        )


if __name__ == "__main__":
    main()
