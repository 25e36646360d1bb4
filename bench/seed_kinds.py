"""Test accuracy and macro-F1 of the seed recipe with each model family, on the food reviews.

Same data, tokenizer (word, 10,000 words, <OOV>, length 100), optimizer (Adam 1e-3), loss (BCE),
epochs (10) and batch size (32) as examples/seed.yaml; only the model section changes. The best
epoch on the validation split is scored on the test set.

    .venv/bin/python bench/seed_kinds.py [--epochs 10] [--kinds lstm gru cnn transformer]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import modelyard
from modelyard.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "lstm": "{kind: lstm, embedding_dim: 128, hidden_size: 64}",
    "gru": "{kind: gru, embedding_dim: 128, hidden_size: 64}",
    "bigru-mean": "{kind: gru, embedding_dim: 128, hidden_size: 64, bidirectional: true, "
    "pooling: mean}",
    "cnn": "{kind: cnn, embedding_dim: 128, num_filters: 100, kernel_sizes: [3, 4, 5], "
    "dropout: 0.5}",
    "transformer": "{kind: transformer, embedding_dim: 128, num_layers: 2, num_heads: 4, "
    "ff_size: 256, dropout: 0.1}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "seed.yaml"))
    parser.add_argument("--kinds", nargs="+", default=["lstm", "gru", "cnn", "transformer"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output-dir", default="runs/bench-seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for kind in args.kinds:
        config = load_config(
            args.config,
            [
                f"model={MODELS[kind]}",
                f"train.epochs={args.epochs}",
                "train.progress=false",
                f"output_dir={args.output_dir}",
                f"name=seed-{kind}",
            ],
        )
        t0 = time.perf_counter()
        run = modelyard.train(config, overwrite=True)
        metrics = run.test_metrics or {}
        best = run.info.get("best_epoch")
        rows.append((kind, metrics, best, time.perf_counter() - t0))
        print(f"{kind}: {metrics}", flush=True)
    print(f"\nseed recipe on food_reviews, {args.epochs} epochs, best epoch by val_accuracy")
    print(
        f"{'model':<12} {'test acc':>9} {'macro-F1':>9} {'ROC-AUC':>8} {'best ep':>8} {'time s':>7}"
    )
    for kind, m, best, secs in rows:
        print(
            f"{kind:<12} {m.get('accuracy', float('nan')):>9.4f} "
            f"{m.get('macro_f1', float('nan')):>9.4f} {m.get('roc_auc', float('nan')):>8.4f} "
            f"{best!s:>8} {secs:>7.0f}"
        )


if __name__ == "__main__":
    main()
