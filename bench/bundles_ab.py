"""Bundles side by side through the runtime: throughput at batch 32 and latency at batch 1.

Interleaved round by round (medians over ``--rounds``), on the texts of a labelled file,
tokenization included, with the runtime's thread count fixed, e.g. an fp32 bundle against its
int8 variants with and without the transformer fusion:

    .venv/bin/python bench/bundles_ab.py models/topics-minilm/1 models/topics-minilm/2 \\
        models/topics-minilm/3 --data data/wordnet_topics/test.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

from modelyard.bundle import read_manifest
from modelyard.runtime import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="bundle directories (NAME/VERSION)")
    parser.add_argument("--data", required=True, help="a CSV with a text column")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with open(args.data, newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)][: args.texts]
    predictors = {path: load(path, intra_op_threads=args.threads) for path in args.bundles}
    for predictor in predictors.values():
        predictor.warmup()
    rates: dict[str, list[float]] = {path: [] for path in predictors}
    latency: dict[str, list[float]] = {path: [] for path in predictors}
    for _ in range(args.rounds):
        for path, p in predictors.items():
            start = time.perf_counter()
            for k in range(0, len(texts), 32):
                p.infer(p.encode(texts[k : k + 32]))
            rates[path].append(len(texts) / (time.perf_counter() - start))
            start = time.perf_counter()
            for text in texts[:100]:
                p.infer(p.encode([text]))
            latency[path].append((time.perf_counter() - start) / 100 * 1000)
    print(
        f"{len(texts)} texts from {args.data}; {args.threads} thread(s); medians of {args.rounds}"
    )
    print("| bundle | variant | batch 32, texts/s | batch 1, ms | MB |\n|---|---|---|---|---|")
    for path in predictors:
        manifest = read_manifest(Path(path))
        size = (Path(path) / manifest.model_file).stat().st_size / 2**20
        variant = (manifest.variant or {}).get("name") or "fp32"
        rate, ms = statistics.median(rates[path]), statistics.median(latency[path])
        print(f"| {path} | {variant} | {rate:.1f} | {ms:.2f} | {size:.1f} |")


if __name__ == "__main__":
    main()
