"""Compressed variants of one model, measured side by side: size, accuracy, latency, throughput.

Trains a config (default: the seed recipe, ``examples/seed.yaml``; ``--set`` overrides apply),
or reuses a trained run given with ``--run``; exports fp32 ONNX; builds the int8-dynamic,
int8-static and fp16 variants (and pruned ones with ``--prune``) through
:func:`modelyard.compress.compress`; and prints one table, every ratio taken against the fp32
bundle of the same run and measured in the same process:

    .venv/bin/python bench/compress.py --set train.epochs=3
    .venv/bin/python bench/compress.py --set train.epochs=3 --set 'model={kind: transformer}'
    .venv/bin/python bench/compress.py --run runs/sentiment --prune 0.3

Latency is one text at a time (p50/p99, tokenization included) and throughput is batches of 32,
both with one ONNX Runtime thread as the server runs a model; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from modelyard.compress import compress
from modelyard.config import load_config
from modelyard.measure import Measurement, format_table
from modelyard.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
MAX_INT8_RATIO = 0.30  # the bar: int8 bundle <= 30% of fp32 ...
MAX_INT8_DROP = 1.0  # ... with <= 1 point of accuracy lost


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "seed.yaml"))
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--run", help="reuse this trained run instead of training")
    p.add_argument("--workdir", help="where runs and bundles go (default: a temporary dir)")
    p.add_argument("--quantize", nargs="*", default=["int8-dynamic", "int8-static", "fp16"])
    p.add_argument("--prune", type=float, default=None)
    p.add_argument("--prune-kind", default="unstructured")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--clip", default=None, help="a value (3.0) or a percentile (p99.9)")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--latency-runs", type=int, default=300)
    p.add_argument("--throughput-batches", type=int, default=30)
    p.add_argument("--json", help="also write the measurements here")
    return p.parse_args()


def judge(measured: list[Measurement]) -> list[str]:
    """One line per int8 variant against the issue's bar."""
    ref = measured[0]
    lines = []
    for m in measured[1:]:
        if "int8" not in m.name:
            continue
        ratio = m.size_mb / ref.size_mb
        ok = ratio <= MAX_INT8_RATIO and m.drop <= MAX_INT8_DROP
        lines.append(
            f"{m.name}: size {100 * ratio:.1f}% of fp32 (bar {100 * MAX_INT8_RATIO:.0f}%), "
            f"drop {m.drop:.2f} points (bar {MAX_INT8_DROP:g}) -> {'PASS' if ok else 'FAIL'}"
        )
    return lines


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="modelyard-bench-compress-"))
    t0 = time.perf_counter()
    if args.run:
        run_dir = Path(args.run)
        from modelyard.training import Run

        config = Run.load(run_dir).config
        train_s = 0.0
    else:
        from modelyard.training import train

        overrides = [*args.set, f"output_dir={work / 'runs'}", "train.progress=false"]
        config = load_config(args.config, overrides)
        run_dir = train(config, overwrite=True).dir
        train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    measured = compress(
        run_dir,
        prune=args.prune,
        prune_kind=args.prune_kind,
        finetune_epochs=args.finetune_epochs,
        quantize=args.quantize,
        clip=args.clip,
        repo=work / "models",
        max_accuracy_drop=args.max_drop,
        latency_runs=args.latency_runs,
        throughput_batches=args.throughput_batches,
    )
    compress_s = time.perf_counter() - t1
    metric = get_task(config.task).primary_metric
    model = config.model.model_dump()
    print()
    print(f"model: {model}")
    print(f"run: {run_dir}  (train {train_s:.0f} s, export+compress+measure {compress_s:.0f} s)")
    print(f"test data: {config.data.test or 'validation split'}; ratios vs fp32 (first row)")
    print(format_table(measured, metric=metric))
    for line in judge(measured):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps([m.to_dict() for m in measured], indent=2) + "\n")


if __name__ == "__main__":
    main()
