"""Training throughput of the seed recipe: length buckets on vs off vs the plain way, in one run.

Three ways to train the same model (Embedding 128 → LSTM 64 → Dense 1, Adam 1e-3, BCE, batch 32)
on the same split and tokenizer of the shipped food reviews:

- ``bucketed``: ``modelyard.training``, length-bucketed batches padded to the longest text;
- ``fixed``:    ``modelyard.training`` with ``train.bucketing=false`` (every batch padded to 100);
- ``plain``:    the model written the plain (Keras) way in PyTorch: pre-padded to 100, no masking,
                the LSTM's last time step into the head. The reference.

It prints samples/second (training steps only), seconds per epoch and test accuracy / macro-F1,
with ratios against ``plain``. The three run interleaved, one epoch of each in turn, so that noise
on a shared machine hits all of them alike.

    .venv/bin/python bench/train_throughput.py --epochs 3

With ``--nproc 2`` it compares data-parallel training instead: ``modelyard train --nproc 1`` vs
``--nproc 2`` (torchrun, gloo on CPU, one torch thread per process, the same global batch), each a
fresh CLI run; samples/s are the global samples over rank 0's training-step time, from the run's
metrics.jsonl, and the ratio is 2 processes over 1.

    .venv/bin/python bench/train_throughput.py --nproc 2 --epochs 2

With ``--pretrained`` it is the pretrained case instead (``bench/pretrained_train.py``, every
other option passed on): MiniLM fine-tuned by the whole ``modelyard train`` command against the
Hugging Face Trainer on the same split, and with ``--matrix`` modelyard's samples/s with length
buckets on/off, fp32 vs bf16, full vs frozen embeddings.

    .venv/bin/python bench/train_throughput.py --pretrained --matrix
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelyard.config import load_config
from modelyard.data import load_splits
from modelyard.tasks import compute_metrics
from modelyard.tokenize import build_tokenizer, encode, pad_batch
from modelyard.training import environment, epochs, prepare, recipe

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    name: str
    samples_per_s: float
    epoch_s: float
    test_accuracy: float
    test_macro_f1: float


class ModelyardVariant:
    """``modelyard``'s own loop (setup / train_epoch / end_epoch / finish), one epoch at a time."""

    def __init__(self, name: str, config_path: Path, epochs: int, bucketing: bool, out: Path):
        self.name = name
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
        self.settings = environment.torch_settings(config)
        self.settings.__enter__()
        self.session = prepare.setup(config, overwrite=True)
        self.samples = len(self.session.data.train)

    def epoch(self, epoch: int) -> float:
        t0 = time.perf_counter()
        epochs.train_epoch(self.session, epoch)
        seconds = time.perf_counter() - t0
        epochs.end_epoch(self.session, epoch)  # validation and checkpoints: not timed
        return seconds

    def test_metrics(self) -> dict[str, float]:
        run = recipe.finish(self.session)
        self.settings.__exit__(None, None, None)
        return dict(run.test_metrics or {})


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


class PlainVariant:
    """The reference: fixed-length pre-padding, plain Adam, no masking, no buckets."""

    name = "plain"

    def __init__(self, config_path: Path) -> None:
        config = load_config(config_path)
        torch.manual_seed(config.seed)
        self.splits = load_splits(config)
        tok = build_tokenizer(config.tokenizer, config.data.clean, self.splits.train.texts)
        length = config.tokenizer.max_length
        side = config.tokenizer.padding_side

        def tensors(texts: list[str]) -> torch.Tensor:
            return torch.from_numpy(pad_batch(encode(tok, texts), side=side, length=length).ids)

        self.x_train = tensors(self.splits.train.texts)
        self.y_train = torch.from_numpy(self.splits.train.targets)
        assert self.splits.test is not None
        self.x_test = tensors(self.splits.test.texts)
        self.model = PlainLSTM(tok.get_vocab_size(), 128, 64)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.rng = np.random.default_rng(config.seed)
        self.batch = config.train.batch_size
        self.samples = len(self.x_train)

    def epoch(self, epoch: int) -> float:
        self.model.train()
        order = self.rng.permutation(len(self.x_train))
        t0 = time.perf_counter()
        for start in range(0, len(order), self.batch):
            idx = torch.from_numpy(order[start : start + self.batch])
            self.opt.zero_grad()
            loss = self.loss_fn(self.model(self.x_train[idx]), self.y_train[idx])
            loss.backward()
            self.opt.step()
        return time.perf_counter() - t0

    def test_metrics(self) -> dict[str, float]:
        self.model.eval()
        x = self.x_test
        with torch.no_grad():
            logits = torch.cat([self.model(x[i : i + 256]) for i in range(0, len(x), 256)])
        assert self.splits.test is not None
        probs = torch.sigmoid(logits).numpy()
        labels = self.splits.labels.labels
        return compute_metrics("binary", self.splits.test.targets, probs, labels)


def compare_processes(config_path: Path, epochs: int, nproc: int) -> None:
    """1 vs ``nproc`` processes through the CLI, the same config and global batch."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, nproc):
            sets = [f"train.epochs={epochs}", "train.num_threads=1", "train.progress=false"]
            sets += [f"output_dir={tmp}", f"name=bench-{n}"]
            cmd = [sys.executable, "-m", "modelyard", "--log-level", "warning", "train"]
            cmd += [str(config_path), "--nproc", str(n), *[a for s in sets for a in ("--set", s)]]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            lines = (Path(tmp) / f"bench-{n}" / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            run = json.loads((Path(tmp) / f"bench-{n}" / "run.json").read_text())
            seen = run["num_train"] * len(records)
            seconds = sum(r["epoch_time_s"] for r in records)
            rows.append((n, seen / seconds, seconds / len(records), wall, records[-1]))
    print(f"\n{config_path.name}, {epochs} epochs, 1 torch thread per process, gloo on CPU")
    head = ("processes", "samples/s", "s/epoch", "ratio", "wall s", "val_loss", "val_acc")
    print("{:<10} {:>10} {:>8} {:>7} {:>7} {:>9} {:>8}".format(*head))
    for n, rate, epoch_s, wall, last in rows:
        print(
            f"{n:<10} {rate:>10.0f} {epoch_s:>8.2f} {rate / rows[0][1]:>6.2f}x {wall:>7.1f} "
            f"{last['val_loss']:>9.4f} {last.get('val_accuracy', float('nan')):>8.4f}"
        )


def main() -> None:
    if "--pretrained" in sys.argv[1:]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pretrained_train import main as pretrained_main

        pretrained_main([a for a in sys.argv[1:] if a != "--pretrained"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "seed.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--nproc", type=int, help="compare 1 vs N data-parallel processes")
    args = parser.parse_args()
    if args.nproc:
        compare_processes(Path(args.config), args.epochs, args.nproc)
        return
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    config_path = Path(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        variants: list[PlainVariant | ModelyardVariant] = [
            PlainVariant(config_path),
            ModelyardVariant("fixed", config_path, args.epochs, False, Path(tmp)),
            ModelyardVariant("bucketed", config_path, args.epochs, True, Path(tmp)),
        ]
        seconds: dict[str, list[float]] = {v.name: [] for v in variants}
        for epoch in range(args.epochs):  # interleaved, so machine noise hits every variant
            for v in variants:
                seconds[v.name].append(v.epoch(epoch))
        results = []
        for v in variants:
            metrics = v.test_metrics()
            total = sum(seconds[v.name])
            results.append(
                Result(
                    v.name,
                    samples_per_s=v.samples * args.epochs / total,
                    epoch_s=total / args.epochs,
                    test_accuracy=float(metrics.get("accuracy", float("nan"))),
                    test_macro_f1=float(metrics.get("macro_f1", float("nan"))),
                )
            )
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
