"""Fine-tuning MiniLM: the whole ``modelyard train`` command against the Hugging Face Trainer.

One run, the same train / validation / test texts for both (the config's split, written to CSV
files so the CLI reads exactly what the Trainer gets), the same machine and torch threads:

- ``trainer``: the Trainer the way its docs write it: ``AutoModelForSequenceClassification``
  from the same local directory, the model's tokenizer (truncation at ``tokenizer.max_length``),
  ``DataCollatorWithPadding``, batch 32, AdamW lr 5e-5 linear decay, 1 epoch, no evaluation or
  saving during training. Timed: ``trainer.train()`` alone; then test accuracy / macro-F1.
- ``modelyard``: ``python -m modelyard train CONFIG --set ...`` in a fresh process, timed from
  start to exit (start-up, tokenizing, training, validation, checkpoints, test evaluation);
  samples/s of its training steps from the run's metrics.jsonl, test metrics from eval/.

It prints samples/s, seconds, the ratio (Trainer's train() seconds over modelyard's whole
command), test accuracy and macro-F1. ``--matrix`` adds modelyard's training-step throughput over
length buckets on/off x fp32/bf16 x full/frozen embeddings (in-process, every layer
training, on ``--matrix-limit`` texts each).

    .venv/bin/python bench/pretrained_train.py                        # wordnet_topics, full
    .venv/bin/python bench/pretrained_train.py --limit 2000 --set train.optimizer.lr=2e-4
    .venv/bin/python bench/pretrained_train.py --dataset food_reviews --skip-trainer
    .venv/bin/python bench/pretrained_train.py --matrix --skip-trainer --skip-modelyard
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.config import load_config
from modelyard.data import load_splits
from modelyard.tokenize.pretrained import resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]

DATASETS: dict[str, list[str]] = {
    "wordnet_topics": [
        "name=topics-minilm",
        "task=multiclass",
        "data.train=data/wordnet_topics/train.csv",
        "data.test=data/wordnet_topics/test.csv",
        "data.labels=null",
        "data.clean={}",
    ],
    "food_reviews": [],  # what examples/minilm.yaml trains
}


@dataclass
class Result:
    name: str
    samples_per_s: float
    train_s: float  # Trainer: train(); modelyard: the training steps
    wall_s: float  # Trainer: train(); modelyard: the whole command
    accuracy: float
    macro_f1: float


@dataclass
class Data:
    """The split both sides train on, as texts, label names and CSV files."""

    task: str
    labels: list[str]
    train: tuple[list[str], np.ndarray]
    validation: tuple[list[str], np.ndarray]
    test: tuple[list[str], np.ndarray]
    sets: list[str]  # --set overrides pointing the CLI at the CSV files
    model_dir: Path
    max_length: int


def prepare_data(config_path: Path, sets: list[str], limit: int | None, out: Path) -> Data:
    """The config's train / validation / test split (train subsampled to ``limit``) as CSVs."""
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(config_path, sets)
    if config.task not in ("binary", "multiclass"):
        raise SystemExit(f"{config.task}: this bench compares single-label classification only")
    splits = load_splits(config)
    assert splits.test is not None, "the config needs a test file"
    labels = list(splits.labels.labels)
    parts: dict[str, tuple[list[str], np.ndarray]] = {}
    for name, ex in (("train", splits.train), ("validation", splits.validation)):
        parts[name] = (list(ex.texts), np.asarray(ex.targets).astype(np.int64))
    parts["test"] = (list(splits.test.texts), np.asarray(splits.test.targets).astype(np.int64))
    if limit is not None and limit < len(parts["train"][0]):
        # the validation split shrinks alike, so the whole command keeps its proportions
        share = limit / len(parts["train"][0])
        rng = np.random.default_rng(config.seed)
        for name in ("train", "validation"):
            texts, targets = parts[name]
            n = max(1, round(len(texts) * share))
            keep = np.sort(rng.permutation(len(texts))[:n])
            parts[name] = ([texts[i] for i in keep], targets[keep])
    files = []
    for name, (texts, targets) in parts.items():
        path = out / f"{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows((t, labels[int(y)]) for t, y in zip(texts, targets, strict=True))
        files.append(f"data.{name}={path}")
    label_list = json.dumps(labels)
    assert config.model.kind == "pretrained", "the config must train model.kind pretrained"
    return Data(
        task=config.task,
        labels=labels,
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        sets=[*files, f"data.labels={label_list}"],
        model_dir=resolve_model_dir(config.model.path),
        max_length=int(config.tokenizer.max_length),
    )


def scores(targets: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return float(accuracy_score(targets, predicted)), float(
        f1_score(targets, predicted, average="macro")
    )


def run_trainer(data: Data, *, lr: float, batch: int, epochs: int, seed: int, out: Path) -> Result:
    """The HF Trainer as a user writes it; timed: ``trainer.train()``."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(data.model_dir))

    def encoded(part: tuple[list[str], np.ndarray]) -> list[dict[str, Any]]:
        enc = tok(part[0], truncation=True, max_length=data.max_length)
        return [
            {**{k: enc[k][i] for k in enc}, "labels": int(part[1][i])} for i in range(len(part[0]))
        ]

    train_set, test_set = encoded(data.train), encoded(data.test)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(data.model_dir), num_labels=len(data.labels)
    )
    args = TrainingArguments(
        output_dir=str(out / "hf"),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        num_train_epochs=epochs,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,  # type: ignore[arg-type]
        data_collator=DataCollatorWithPadding(tok),
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    logits = trainer.predict(test_set).predictions  # type: ignore[arg-type]
    accuracy, macro_f1 = scores(data.test[1], np.asarray(logits).argmax(-1))
    n = len(data.train[0]) * epochs
    return Result("HF Trainer", n / seconds, seconds, seconds, accuracy, macro_f1)


def run_modelyard(config_path: Path, sets: list[str], out: Path, name: str) -> Result:
    """``modelyard train`` in a fresh process; timed from start to exit."""
    out.mkdir(parents=True)
    sets = [*sets, f"output_dir={out}", "train.progress=false"]
    cmd = [sys.executable, "-m", "modelyard", "--log-level", "warning", "train", str(config_path)]
    cmd += [a for s in sets for a in ("--set", s)] + ["--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    run_dir = next(p for p in out.iterdir() if (p / "run.json").is_file())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run_dir / "run.json").read_text())
    seconds = sum(r["epoch_time_s"] for r in records)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())["metrics"]
    return Result(
        name,
        info["num_train"] * len(records) / seconds,
        seconds,
        wall,
        float(metrics["accuracy"]),
        float(metrics["macro_f1"]),
    )


MATRIX = [
    (bucketing, precision, frozen)
    for frozen in (False, True)
    for precision in ("fp32", "bf16")
    for bucketing in (True, False)
]


def throughput_matrix(config_path: Path, sets: list[str], out: Path) -> list[tuple[Any, ...]]:
    """Training-step samples/s of ``modelyard.training`` over the matrix (one epoch each).

    Every encoder layer trains (``model.freeze_layers=0``), so "frozen" is the embedding table
    alone; with frozen lower layers the embeddings would also decide how deep backward goes.
    """
    from modelyard.training import environment, epochs, prepare

    rows = []
    for bucketing, precision, frozen in MATRIX:
        config = load_config(
            config_path,
            [
                *sets,
                f"train.bucketing={str(bucketing).lower()}",
                f"train.precision={precision}",
                f"model.freeze_embeddings={str(frozen).lower()}",
                "model.freeze_layers=0",
                f"output_dir={out}",
                "name=bench-matrix",
                "train.progress=false",
                "train.epochs=1",
                "train.schedule.warmup_steps=0",
            ],
        )
        with environment.torch_settings(config):
            session = prepare.setup(config, overwrite=True)
            epochs.train_epoch(session, 0)
            p = session.progress
            rows.append((bucketing, precision, frozen, p.seen / p.elapsed_s, p.elapsed_s))
        del session
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "minilm.yaml"))
    parser.add_argument("--dataset", default="wordnet_topics", choices=sorted(DATASETS))
    parser.add_argument("--limit", type=int, help="subsample the training split to N texts")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="modelyard override"
    )
    parser.add_argument("--trainer-lr", type=float, default=5e-5)
    parser.add_argument("--trainer-batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="both sides")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="one more modelyard run with these overrides, after the Trainer (repeatable)",
    )
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-modelyard", action="store_true")
    parser.add_argument("--matrix", action="store_true", help="modelyard's throughput matrix")
    parser.add_argument("--matrix-limit", type=int, default=320)
    parser.add_argument("--threads", type=int, help="torch threads, both sides (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config_path = Path(args.config)
    base = [*DATASETS[args.dataset], f"train.epochs={args.epochs}"]
    if args.threads:
        torch.set_num_threads(args.threads)
        base.append(f"train.num_threads={args.threads}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data = prepare_data(config_path, base, args.limit, out)
        sets = [*base, *data.sets, *args.set]
        seed = int(load_config(config_path, sets).seed)
        if not args.skip_modelyard:
            results.append(run_modelyard(config_path, sets, out / "runs", "modelyard train"))
        if not args.skip_trainer:
            kw = {"lr": args.trainer_lr, "batch": args.trainer_batch, "epochs": args.epochs}
            results.append(run_trainer(data, seed=seed, out=out, **kw))
        for i, variant in enumerate(args.variant):
            name, _, extra = variant.partition(":")
            more = [*sets, *(e for e in extra.split(",") if e)]
            results.append(run_modelyard(config_path, more, out / f"runs{i}", f"modelyard {name}"))
        matrix = []
        if args.matrix:
            small = prepare_data(config_path, base, args.matrix_limit, out / "matrix")
            matrix = throughput_matrix(config_path, [*base, *small.sets, *args.set], out / "mruns")
    n_train, n_val, n_test = (len(p[0]) for p in (data.train, data.validation, data.test))
    print(
        f"\n{args.dataset}: {n_train} train / {n_val} validation / {n_test} test texts, "
        f"{args.epochs} epoch(s), torch threads {torch.get_num_threads()}"
    )
    if args.set:
        print("modelyard --set " + " ".join(args.set))
    for variant in args.variant:
        print("variant " + variant)
    theirs = next((r for r in results if r.name == "HF Trainer"), None)
    head = ("side", "samples/s", "train s", "whole s", "vs Trainer", "test acc", "macro-F1")
    if results:
        print("{:<22} {:>10} {:>8} {:>8} {:>10} {:>9} {:>9}".format(*head))
    for r in results:
        # the bar: modelyard's whole command over the Trainer's train() alone
        ratio = f"{r.wall_s / theirs.train_s:.2f}x" if theirs is not None else "-"
        print(
            f"{r.name:<22} {r.samples_per_s:>10.1f} {r.train_s:>8.1f} {r.wall_s:>8.1f} "
            f"{ratio:>10} {r.accuracy:>9.4f} {r.macro_f1:>9.4f}"
        )
    for ours in results:
        if theirs is None or ours is theirs:
            continue
        ratio = ours.wall_s / theirs.train_s
        print(
            f"{ours.name}: whole command / Trainer train() {ratio:.2f}x "
            f"({'meets' if ratio <= 0.5 else 'misses'} <= 0.5); accuracy "
            f"{ours.accuracy - theirs.accuracy:+.4f} "
            f"({'meets' if ours.accuracy >= theirs.accuracy else 'misses'} >= Trainer's)"
        )
    if matrix:
        print(f"\nmodelyard training steps, {args.matrix_limit} texts, 1 epoch each")
        print(
            "{:<9} {:>9} {:>11} {:>10} {:>8}".format(
                "buckets", "precision", "embeddings", "samples/s", "s"
            )
        )
        for bucketing, precision, frozen, rate, secs in matrix:
            print(
                f"{'on' if bucketing else 'off':<9} {precision:>9} "
                f"{'frozen' if frozen else 'full':>11} {rate:>10.1f} {secs:>8.1f}"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": [r.__dict__ for r in results], "matrix": matrix}, indent=1)
        )


if __name__ == "__main__":
    main()
