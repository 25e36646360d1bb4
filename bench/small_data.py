"""Every model family on the three shipped datasets, beside a TF-IDF + linear-model baseline.

For each dataset and family, trains ``--seeds`` runs through ``modelyard.train`` (the best
checkpoint on the validation split is scored on the test file) and prints test accuracy and
macro-F1 (regression: MAE, RMSE, R²) as mean ± std over the seeds, beside scikit-learn's TF-IDF
(word 1-2-grams + char 2-5-grams, sublinear tf) + logistic regression (C=10; regression: ridge)
fitted on the same training split, and which family wins and by how much.

scikit-learn is a bench-only dependency: ``pip install -e '.[train,bench]'``.

    .venv/bin/python bench/small_data.py                      # everything: long (hours on 2 cores)
    .venv/bin/python bench/small_data.py --datasets food_reviews --families bag_of_ngrams cnn \\
        --seeds 1 2 --epochs 5
    .venv/bin/python bench/small_data.py --config examples/seed.yaml --seeds 1 2 3 \\
        --set model.init=torch                                # one config over seeds

Held-out style (``--heldout TRAIN TEST``): data a user brings, tried as a new user would. Each
``--contenders`` entry (a config file, or ``init``: the starter config ``modelyard init`` writes
for the task) is trained with only ``task`` and ``data`` changed (train, test, ``--text``,
``--label``; its ``validation_split`` kept), beside TF-IDF + LR on the same split, and the gap
to the baseline is printed. ``bench/build_heldout.py`` builds three such sets in /tmp.

    .venv/bin/python bench/small_data.py --heldout /tmp/heldout/py_docstrings/train.csv \\
        /tmp/heldout/py_docstrings/test.csv --seeds 1 --set train.num_threads=1
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import modelyard
from modelyard.config import Config, apply_override, load_config, validate_config
from modelyard.data import load_splits
from modelyard.templates import starter_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Dataset:
    """A shipped dataset as a config skeleton (task, files, tokenizer)."""

    task: str
    data: dict[str, Any]
    tokenizer: dict[str, Any]


DATASETS: dict[str, Dataset] = {
    "food_reviews": Dataset(
        task="binary",
        data={
            "train": "data/food_reviews/train.csv",
            "test": "data/food_reviews/test.csv",
            "labels": ["other", "great"],
        },
        tokenizer={"kind": "word", "num_words": 10000, "max_length": 200},
    ),
    "wordnet_topics": Dataset(
        task="multiclass",
        data={"train": "data/wordnet_topics/train.csv", "test": "data/wordnet_topics/test.csv"},
        tokenizer={"kind": "word", "num_words": 20000, "max_length": 48},
    ),
    "movie_snippets": Dataset(
        task="regression",
        data={
            "train": "data/movie_snippets/train.csv",
            "test": "data/movie_snippets/test.csv",
            "label": "score",
        },
        tokenizer={"kind": "word", "num_words": 20000, "max_length": 64},
    ),
}

# the model section per family (and any train settings the family needs); everything else is
# modelyard's defaults, so this table measures the defaults
FAMILIES: dict[str, dict[str, Any]] = {
    # subword pieces give the bag the morphology a word tokenizer hides (WordNet topics, seed 1:
    # word 0.816, wordpiece-16k 0.820, bpe-8k 0.823, bpe-16k 0.830, bpe-24k 0.822)
    "bag_of_ngrams": {
        "model": {"kind": "bag_of_ngrams"},
        "tokenizer": {"kind": "bpe", "vocab_size": 16000},
    },
    # examples/linear_ngrams.yaml's settings; it reads characters (the char tokenizer)
    "linear_ngrams": {
        "model": {"kind": "linear_ngrams", "buckets": 2**18},
        "tokenizer": {"kind": "char", "max_length": 1024},
        "train": {"optimizer": {"name": "adam", "lr": 0.01}, "epochs": 30},
    },
    "cnn": {"model": {"kind": "cnn", "dropout": 0.5}},
    "lstm": {"model": {"kind": "lstm"}},
    "bigru": {"model": {"kind": "gru", "bidirectional": True, "pooling": "mean"}},
    "transformer": {"model": {"kind": "transformer"}},
}

METRICS = {
    "binary": ("accuracy", "macro_f1"),
    "multiclass": ("accuracy", "macro_f1"),
    "regression": ("rmse", "mae", "r2"),
}
LOWER_IS_BETTER = {"rmse", "mae"}

BASELINE_SETTINGS = (
    "TfidfVectorizer(analyzer='word', ngram_range=(1, 2), sublinear_tf=True) + "
    "TfidfVectorizer(analyzer='char_wb', ngram_range=(2, 5), sublinear_tf=True), hstacked; "
    "LogisticRegression(C=10, max_iter=2000) (regression: Ridge(alpha=1.0)); "
    "fitted on the same training split as the models (validation split held out), scored on test"
)


@dataclass
class Row:
    """One line of the table: a family (or the baseline) on one dataset."""

    dataset: str
    name: str
    scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def add(self, metrics: dict[str, float], seconds: float) -> None:
        for key, value in metrics.items():
            self.scores.setdefault(key, []).append(float(value))
        self.seconds.append(seconds)

    def mean(self, key: str) -> float:
        return statistics.fmean(self.scores[key])

    def cell(self, key: str) -> str:
        values = self.scores.get(key, [])
        if not values:
            return "—"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def family_config(
    dataset: str, family: str, seed: int, epochs: int | None, overrides: list[str], out: str
) -> Config:
    """The config of one run: the dataset's skeleton, the family's sections, then ``--set``."""
    spec = DATASETS[dataset]
    raw: dict[str, Any] = {
        "name": f"{dataset}-{family}-s{seed}",
        "task": spec.task,
        "seed": seed,
        "output_dir": out,
        "data": dict(spec.data),
        "tokenizer": dict(spec.tokenizer),
        "train": {"progress": False},
    }
    for section, values in FAMILIES[family].items():
        raw[section] = {**raw.get(section, {}), **values}
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, f"{dataset}/{family}")


def file_config(path: str, seed: int, epochs: int | None, overrides: list[str], out: str) -> Config:
    """``--config``: one config file, reseeded, with the bench's overrides."""
    sets = [f"seed={seed}", "train.progress=false", f"output_dir={out}", *overrides]
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    config = load_config(path, sets)
    return config.model_copy(update={"name": f"{config.name}-s{seed}"})


# what --heldout trains beside the baseline; "init" is the starter config of `modelyard init`,
# "tune" is `modelyard tune` on that starter config within --tune-budget (add it to --contenders)
HELDOUT_CONTENDERS = ["examples/bag_of_ngrams.yaml", "examples/linear_ngrams.yaml", "init"]


def heldout_task(train: str, label: str) -> str:
    """``binary`` for two distinct labels in the training file, else ``multiclass``."""
    import csv

    with open(train, encoding="utf-8", newline="") as fh:
        classes = {row[label] for row in csv.DictReader(fh)}
    return "binary" if len(classes) == 2 else "multiclass"


def heldout_config(
    contender: str, files: list[str], text: str, label: str, seed: int, overrides: list[str],
    out: str,
) -> Config:  # fmt: skip
    """A contender's config with only ``task`` and ``data`` changed, as a user would."""
    task = heldout_task(files[0], label)
    if contender in ("init", "tune"):
        raw = yaml.safe_load(starter_config(task, contender))
    else:
        raw = yaml.safe_load((ROOT / contender).read_text(encoding="utf-8"))
    raw["task"] = task
    kept = {k: v for k, v in raw["data"].items() if k in ("validation_split", "clean")}
    raw["data"] = {**kept, "train": files[0], "test": files[1], "text": text, "label": label}
    name = f"{Path(files[0]).parent.name}-{Path(contender).stem}-s{seed}"
    raw.update(name=name, seed=seed, output_dir=out)
    raw.setdefault("train", {})["progress"] = False
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, contender)


def train_one(config: Config, tune_budget: str | None = None) -> tuple[dict[str, float], float]:
    """Train (or, with ``tune_budget``, tune), return the winner's test metrics and the time."""
    t0 = time.perf_counter()
    if tune_budget is not None:
        from modelyard.search import tune

        out = Path(config.output_dir) / f"{config.name}-tune"
        shutil.rmtree(out, ignore_errors=True)
        result = tune(config, budget=tune_budget, out_dir=out, progress=print)
        if result.best is None or result.best.test_metrics is None:
            raise SystemExit(f"{config.name}: the tune finished no trial")
        print(f"  {config.name}: {result.leaderboard[0].candidate} won, in {result.spent_s:.0f} s")
        return dict(result.best.test_metrics), time.perf_counter() - t0
    run = modelyard.train(config, overwrite=True)
    if run.test_metrics is None:
        raise SystemExit(f"{config.name}: the config has no test file")
    return dict(run.test_metrics), time.perf_counter() - t0


def baseline(config: Config) -> tuple[dict[str, float], float]:
    """TF-IDF + logistic regression (ridge for regression) on the run's own data split."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    from modelyard.tasks import compute_metrics

    t0 = time.perf_counter()
    splits = load_splits(config)
    if splits.test is None:
        raise SystemExit(f"{config.name}: the config has no test file")
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    train_texts, test_texts = list(splits.train.texts), list(splits.test.texts)
    x_train = sp.hstack([word.fit_transform(train_texts), char.fit_transform(train_texts)]).tocsr()
    x_test = sp.hstack([word.transform(test_texts), char.transform(test_texts)]).tocsr()
    y_train = np.asarray(splits.train.targets)
    task = config.task
    if task == "regression":
        reg = Ridge(alpha=1.0).fit(x_train, y_train.reshape(-1))
        scores = reg.predict(x_test).reshape(-1, 1)
    elif task == "binary":
        clf = LogisticRegression(C=10, max_iter=2000).fit(x_train, y_train.reshape(-1))
        scores = clf.predict_proba(x_test)[:, 1:]
    else:
        clf = LogisticRegression(C=10, max_iter=2000).fit(x_train, y_train.reshape(-1))
        # columns in class-id order, as the label space numbers them
        proba = np.zeros((x_test.shape[0], splits.labels.num_outputs))
        proba[:, clf.classes_.astype(int)] = clf.predict_proba(x_test)
        scores = proba
    metrics = compute_metrics(task, np.asarray(splits.test.targets), scores, splits.labels.labels)
    return metrics, time.perf_counter() - t0


def print_table(rows: list[Row], task_of: dict[str, str]) -> None:
    """Markdown table per dataset, then the winner against the baseline."""
    for dataset in dict.fromkeys(r.dataset for r in rows):
        task = task_of[dataset]
        keys = METRICS[task]
        mine = [r for r in rows if r.dataset == dataset]
        print(f"\n### {dataset} ({task})\n")
        print("| model | " + " | ".join(f"test {k}" for k in keys) + " | seeds | s/run |")
        print("|---|" + "---|" * len(keys) + "---|---|")
        for r in mine:
            cells = " | ".join(r.cell(k) for k in keys)
            secs = statistics.fmean(r.seconds) if r.seconds else float("nan")
            print(f"| {r.name} | {cells} | {len(r.seconds)} | {secs:.0f} |")
        primary = keys[0]
        families = [r for r in mine if r.name != "tfidf+linear" and primary in r.scores]
        base = next((r for r in mine if r.name == "tfidf+linear"), None)
        if not families:
            continue
        sign = -1.0 if primary in LOWER_IS_BETTER else 1.0
        best = max(families, key=lambda r: sign * r.mean(primary))
        line = f"\nbest family on {dataset}: {best.name} ({primary} {best.mean(primary):.4f})"
        if base is not None:
            delta = best.mean(primary) - base.mean(primary)
            verdict = "beats" if sign * delta > 0 else "trails"
            line += (
                f"; {verdict} the baseline ({base.mean(primary):.4f}) by "
                f"{abs(delta) * (100 if primary == 'accuracy' else 1):.2f}"
                f"{' points' if primary == 'accuracy' else ''}"
            )
        print(line)
        if base is not None and primary == "accuracy":
            for r in families:  # the held-out mode's figure: each contender's gap
                gap = 100 * (r.mean(primary) - base.mean(primary))
                print(f"gap to TF-IDF + LR on {dataset}: {r.name} {gap:+.2f} points")


def _report(
    dataset: str, name: str, seed: int, task: str, metrics: dict[str, float], secs: float
) -> None:
    shown = {k: round(v, 4) for k, v in metrics.items() if k in METRICS[task]}
    print(f"{dataset} {name} seed {seed}: {shown} ({secs:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None, help="default: train.epochs (10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. train.num_threads=1")  # fmt: skip
    parser.add_argument("--config", help="bench this config file over --seeds instead")
    parser.add_argument(
        "--heldout",
        nargs=2,
        metavar=("TRAIN", "TEST"),
        help="held-out style: any CSV pair, the contenders vs TF-IDF + LR",
    )
    parser.add_argument("--contenders", nargs="+", default=HELDOUT_CONTENDERS,
                        help="--heldout: config files, init, tune")  # fmt: skip
    parser.add_argument("--tune-budget", default="20m", help="--heldout: the tune contender's")
    parser.add_argument("--text", default="text", help="--heldout: the text column")
    parser.add_argument("--label", default="label", help="--heldout: the label column")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--output-dir", default="runs/bench-small-data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"baseline: {BASELINE_SETTINGS}")
    print(f"overrides: {args.set or 'none'}; seeds {args.seeds}; epochs {args.epochs or 'config'}")
    rows: list[Row] = []
    task_of: dict[str, str] = {}
    datasets = [Path(args.config).stem] if args.config else args.datasets
    families = [Path(args.config).name] if args.config else args.families
    if args.heldout:
        datasets, families = [Path(args.heldout[0]).parent.name], args.contenders
    for dataset in datasets:

        def config_for(family: str, seed: int, dataset: str = dataset) -> Config:
            if args.heldout:
                return heldout_config(
                    family, args.heldout, args.text, args.label, seed, args.set, args.output_dir
                )
            if args.config:
                return file_config(args.config, seed, args.epochs, args.set, args.output_dir)
            return family_config(dataset, family, seed, args.epochs, args.set, args.output_dir)

        if not args.no_baseline:
            # once per seed: the validation split (held out from the fit) follows the seed
            base = Row(dataset, "tfidf+linear")
            for seed in args.seeds:
                config = config_for(families[0], seed)
                metrics, secs = baseline(config)
                base.add(metrics, secs)
                _report(dataset, "tfidf+linear", seed, config.task, metrics, secs)
            rows.append(base)
        for family in families:
            row = Row(dataset, family)
            for seed in args.seeds:
                config = config_for(family, seed)
                task_of[dataset] = config.task
                budget = args.tune_budget if args.heldout and family == "tune" else None
                metrics, secs = train_one(config, budget)
                row.add(metrics, secs)
                _report(dataset, family, seed, config.task, metrics, secs)
            rows.append(row)
    print_table(rows, task_of)
    print("\nconfig of the last run:\n" + yaml.safe_dump(config.model_dump(mode="json")))


if __name__ == "__main__":
    main()
