"""A pretrained encoder's fp32 and int8 bundles on every shipped dataset, beside TF-IDF + LR.

For each dataset: ``modelyard train`` with a pretrained config (default ``examples/minilm.yaml``;
only its task and data are replaced by the dataset's), timed end to end as a command; then
``modelyard.compress`` to ``int8-dynamic``, which re-scores the fp32 and the int8 bundle through
ONNX Runtime on the test file; and the TF-IDF + logistic-regression (ridge) baseline of
``bench/small_data.py`` on the same training split, in the same run.

    .venv/bin/python bench/pretrained_bundles.py [--datasets food_reviews wordnet_topics] \\
        [--config examples/minilm.yaml] [--set train.epochs=2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from small_data import BASELINE_SETTINGS, DATASETS, METRICS, baseline  # noqa: E402

from modelyard.compress import compress  # noqa: E402
from modelyard.config import load_config  # noqa: E402
from modelyard.runs import Run  # noqa: E402


def dataset_overrides(dataset: str) -> list[str]:
    """``--set`` arguments that point a config at one shipped dataset."""
    spec = DATASETS[dataset]
    data = {"validation_split": 0.1, "labels": None, "label": "label", **spec.data}
    sets = [f"task={spec.task}"]
    sets += [f"data.{key}={json.dumps(value)}" for key, value in data.items()]
    if spec.task == "regression":  # a classification config's monitor has no meaning here
        sets.append("train.monitor=val_loss")
    return sets


def train(config: str, dataset: str, extra: list[str], out: Path, seed: int) -> tuple[Run, float]:
    """``modelyard train`` as a user runs it; returns the run and the command's wall time."""
    name = f"{dataset}-pretrained"
    sets = [f"name={name}", f"output_dir={out}", f"seed={seed}", *dataset_overrides(dataset)]
    sets += extra
    cmd = [str(Path(sys.executable).with_name("modelyard")), "--log-level", "warning", "train"]
    cmd += [config, "--overwrite"] + [arg for s in sets for arg in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return Run.load(out / name), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--config", default=str(ROOT / "examples" / "minilm.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "bench-pretrained"))
    args = parser.parse_args()
    out = Path(args.output_dir)
    print(f"config {args.config} {args.sets}; seed {args.seed}")
    print(f"baseline: {BASELINE_SETTINGS}")
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        run, seconds = train(args.config, dataset, args.sets, out, args.seed)
        measured = compress(run.dir, quantize=["int8-dynamic"], repo=out / "models",
                            max_accuracy_drop=100.0, latency_runs=50)  # fmt: skip
        config = load_config(run.dir / "config.yaml")
        base_metrics, base_seconds = baseline(config)
        for m in measured:
            rows.append({"dataset": dataset, "model": m.name, "size_mb": m.size_mb,
                         "p50_ms": m.p50_ms, "train_s": seconds, **m.test_metrics})  # fmt: skip
        rows.append({"dataset": dataset, "model": "tfidf+linear", "train_s": base_seconds,
                     **base_metrics})  # fmt: skip
        for row in rows[-3:]:
            print(json.dumps(row), flush=True)
    print()
    for dataset in args.datasets:
        keys = METRICS[DATASETS[dataset].task]
        print(f"### {dataset}\n")
        print("| model | " + " | ".join(f"test {k}" for k in keys) + " | MB | p50 ms | train s |")
        print("|---" * (len(keys) + 4) + "|")
        for row in (r for r in rows if r["dataset"] == dataset):
            cells = [f"{row[k]:.4f}" if k in row else "—" for k in keys]
            extra = [f"{row[k]:.1f}" if k in row else "—" for k in ("size_mb", "p50_ms", "train_s")]
            print(f"| {row['model']} | " + " | ".join(cells + extra) + " |")
        print()
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
