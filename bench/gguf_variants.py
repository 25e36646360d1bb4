"""What each GGUF type costs a fine-tuned SmolLM2-135M: `modelyard run` on a generation config.

A short definitions run (examples/definitions.yaml on the first --train records of
data/wordnet_definitions/train.jsonl, the next --validation records to validate, 1 epoch), then
the pipeline's GGUF variants (F32, F16, Q8_0, Q4_0): each exported through the parity gate, scored
through llama.cpp (validation perplexity from the engine's logits against torch's on the same
tokens; ROUGE-L of its greedy answers to the test prompts against the run's own in torch), timed
(time to first token, decode tokens/s of one stream) and chosen per target.

    .venv/bin/python bench/gguf_variants.py [--train 512] [--validation 64] [--test 500]
        [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "wordnet_definitions"


def subset(source: Path, target: Path, start: int, count: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)[start : start + count]
    target.write_text("".join(lines), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=512, help="train records")
    parser.add_argument("--validation", type=int, default=64, help="validation records")
    parser.add_argument("--test", type=int, default=500, help="test records")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--torch-threads", type=int, default=2, help="training threads")
    parser.add_argument("--work", default="/tmp/gguf-variants", help="runs and models go here")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import modelyard.exporters.gguf_bundle as gguf_bundle
    from modelyard.bundle import read_manifest
    from modelyard.config import load_config
    from modelyard.pipeline import run_pipeline

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train = subset(DATA / "train.jsonl", work / "train.jsonl", 0, args.train)
    validation = subset(DATA / "train.jsonl", work / "val.jsonl", args.train, args.validation)
    test = subset(DATA / "test.jsonl", work / "test.jsonl", 0, args.test)
    config = load_config(
        ROOT / "examples" / "definitions.yaml",
        [
            f"data.train={train}",
            f"data.validation={validation}",
            f"data.test={test}",
            f"output_dir={work / 'runs'}",
            f"export.repo={work / 'models'}",
            f"train.num_threads={args.torch_threads}",
            "train.progress=false",
            # F32 too: the engine's fp32 answers, which parity ties to torch's fp32 ones
            "compress.gguf=[f32, f16, q8_0, q4_0]",
            # a server that must stream faster than a person reads; a small device
            "targets={server: {min_tokens_per_s: 20}, edge: {max_size_mb: 120}}",
        ],
    )
    gguf_bundle.ENGINE_THREADS = args.threads
    started = time.perf_counter()
    result = run_pipeline(config, overwrite=True)
    wall = time.perf_counter() - started
    rows = []
    for m in result.variants:
        manifest = read_manifest(m.bundle)
        quality = manifest.variant.get("quality", {})
        rows.append(
            {
                "variant": m.name,
                "size_mb": m.size_mb,
                "ttft_p50_ms": m.p50_ms,
                "tokens_per_s": m.throughput,
                **{k: quality.get(k) for k in sorted(quality)},
                "parity": manifest.parity,
            }
        )
        print(json.dumps(rows[-1]))
    print(f"torch run test metrics: {result.run.test_metrics}; whole command {wall:.0f} s")
    if args.json:
        payload = {"rows": rows, "run_test": result.run.test_metrics, "wall_s": wall}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
