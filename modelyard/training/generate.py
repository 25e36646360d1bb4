"""Answers from a causal language model, and how they score against references.

Generation is greedy and batched through ``transformers``' ``generate`` (its KV cache), prompts
sorted by length and left-padded so a batch pays little padding; the prompt is the tokenizer's
own chat template with the generation prompt added. Scores come from a maintained library:
ROUGE-L F1 (``rouge-score``, stemmed), plus exact match of normalised text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from modelyard.atomic import atomic_write_text
from modelyard.config import CausalLMConfig
from modelyard.data.chat import GenerationInput
from modelyard.errors import DataError
from modelyard.metrics import json_safe
from modelyard.models.causal_lm import LoadedCausalLM, load_causal_lm
from modelyard.training.environment import autocast_dtype

log = logging.getLogger("modelyard.training")

_SPACE = re.compile(r"\s+")


def prompt_text(tokenizer: Any, record: GenerationInput) -> str:
    """What the model continues: the chat template applied to the record's turns, ending where
    the assistant's answer starts; a plain-text record's text as it is.

    Raises:
        DataError: a chat record and a tokenizer without a chat template (names file:line).
    """
    if record.text is not None:
        return record.text
    if not tokenizer.chat_template:
        raise DataError(
            f"{record.source}:{record.line}: the tokenizer has no chat template to render the "
            "turns with; give plain-text records"
        )
    return str(
        tokenizer.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=True)
    )


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers to each prompt (text as the model sees it), in input order.

    Args:
        model: a ``transformers`` causal LM (a peft model too).
        tokenizer: its tokenizer.
        prompts: the texts to continue (:func:`prompt_text`).
        max_new_tokens: the longest answer, in tokens.
        batch_size: prompts per ``generate`` call.
        autocast: run under autocast in this dtype (``bf16`` on CPUs that have it).
        progress: called with the number of prompts answered after each batch.

    Returns:
        The decoded answers, special tokens removed, stripped.
    """
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            longest = max(max(len(encoded[i]) for i in idx), 1)
            ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)  # (B, T) left-padded
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i]
                if seq:
                    ids[row, longest - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[row, longest - len(seq) :] = 1
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, longest:]  # (B, new tokens)
            for row, i in enumerate(idx):
                answers[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return answers


def normalise(text: str) -> str:
    """Lower case, one space between words, no trailing full stop: what exact match compares."""
    return _SPACE.sub(" ", text.strip().lower()).rstrip(".").strip()


def score_answers(answers: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``rouge_l`` (mean ROUGE-L F1, stemmed) and ``exact_match`` (share equal once normalised).

    Raises:
        ValueError: the two lists differ in length.
    """
    from rouge_score import rouge_scorer

    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not answers:
        return {"rouge_l": 0.0, "exact_match": 0.0}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = list(zip(answers, references, strict=True))
    rouge = [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in pairs]
    exact = [normalise(ans) == normalise(ref) for ans, ref in pairs]
    return {"rouge_l": float(np.mean(rouge)), "exact_match": float(np.mean(exact))}


@dataclass
class GenerationResult:
    """Scores of generated answers against references, the fine-tuned model's and the base's.

    Attributes:
        metrics: ``rouge_l``, ``exact_match`` of the model evaluated.
        base_metrics: the same for the base model before fine-tuning (None when not run).
        samples: per record: ``line``, ``prompt`` (its last user turn), ``reference``,
            ``fine_tuned`` and ``base`` answers.
    """

    metrics: dict[str, float]
    base_metrics: dict[str, float] | None
    num_examples: int
    source: str
    samples: list[dict[str, Any]] = field(default_factory=list)


def check_references(inputs: Sequence[GenerationInput]) -> list[str]:
    """Every record's reference answer, which scoring needs.

    Raises:
        DataError: a record has none (names file:line).
    """
    for record in inputs:
        if record.reference is None:
            raise DataError(
                f"{record.source}:{record.line}: no reference answer to score against (a chat "
                "needs a last assistant turn, a prompt a completion)"
            )
    return [str(record.reference) for record in inputs]


def generation_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to generate in: ``train.precision``'s, but no fp16 on a CPU."""
    dtype = autocast_dtype(precision)
    return None if device.type == "cpu" and dtype is torch.float16 else dtype


def last_turn(record: GenerationInput) -> str:
    """The record's question as a reader sees it: its last user turn, or its text."""
    if record.text is not None:
        return record.text
    return record.messages[-1]["content"] if record.messages else ""


@contextmanager
def base_model(loaded: LoadedCausalLM, config: CausalLMConfig) -> Iterator[Any]:
    """The model before fine-tuning: the adapters switched off (LoRA), else the base weights
    loaded again beside the fine-tuned ones."""
    model = loaded.model
    if model.has_adapters:
        with model.lm.disable_adapter():  # type: ignore[operator]
            yield model.lm
        return
    base = load_causal_lm(config.model_copy(update={"lora": None})).model
    yield base.lm


def evaluate_generation(
    loaded: LoadedCausalLM,
    inputs: Sequence[GenerationInput],
    precision: str,
    model_config: CausalLMConfig,
    *,
    max_new_tokens: int,
    out_dir: Path | None = None,
    base: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> GenerationResult:
    """Greedy answers to ``inputs`` from the fine-tuned model (and the base), scored against
    their references; written to ``out_dir`` (``metrics.json``, ``samples.jsonl``,
    ``report.txt``) when given.

    Raises:
        DataError: a record has no reference answer.
    """
    refs = check_references(inputs)
    tok = loaded.tokenizer
    prompts = [prompt_text(tok, r) for r in inputs]
    dtype = generation_autocast(precision, next(loaded.model.parameters()).device)

    def run(model: Any, who: str) -> list[str]:
        with tqdm(
            total=len(prompts),
            desc=f"generating ({who})",
            unit="answer",
            leave=False,
            disable=not (progress and sys.stderr.isatty()),
        ) as bar:
            return generate_answers(
                model,
                tok,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                autocast=dtype,
                progress=bar.update,
            )

    tuned = run(loaded.model.lm, "fine-tuned")
    metrics = score_answers(tuned, refs)
    base_answers: list[str] | None = None
    base_metrics = None
    if base:
        with base_model(loaded, model_config) as lm:
            base_answers = run(lm, "base")
        base_metrics = score_answers(base_answers, refs)
    samples = [
        {
            "line": r.line,
            "prompt": last_turn(r),
            "reference": ref,
            "fine_tuned": answer,
            **({"base": base_answers[i]} if base_answers is not None else {}),
        }
        for i, (r, ref, answer) in enumerate(zip(inputs, refs, tuned, strict=True))
    ]
    source = inputs[0].source if inputs else ""
    result = GenerationResult(metrics, base_metrics, len(inputs), source, samples)
    if out_dir is not None:
        write_generation_eval(result, out_dir, max_new_tokens=max_new_tokens)
    return result


def write_generation_eval(result: GenerationResult, out_dir: Path, *, max_new_tokens: int) -> None:
    """``metrics.json`` (the run's test scores, the base model's beside them), ``samples.jsonl``
    (every record's answers) and ``report.txt`` (the scores and the first samples)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "split": "test",
        "source": result.source,
        "num_examples": result.num_examples,
        "metrics": result.metrics,
        "base_metrics": result.base_metrics,
        "decoding": {"strategy": "greedy", "max_new_tokens": max_new_tokens},
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(json_safe(payload), indent=2) + "\n")
    lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result.samples)
    atomic_write_text(out_dir / "samples.jsonl", lines)
    atomic_write_text(out_dir / "report.txt", generation_report(result))


def generation_report(result: GenerationResult, samples: int = 10) -> str:
    """The scores side by side and the first ``samples`` answers, as plain text."""
    names = list(result.metrics)
    out = [f"test: {result.source} ({result.num_examples} records, greedy decoding)", ""]
    out.append(f"{'':12}" + "".join(f"{n:>14}" for n in names))
    out.append(f"{'fine-tuned':12}" + "".join(f"{result.metrics[n]:>14.4f}" for n in names))
    if result.base_metrics is not None:
        base = result.base_metrics
        out.append(f"{'base':12}" + "".join(f"{base[n]:>14.4f}" for n in names))
    out.append("")
    for sample in result.samples[:samples]:
        out.append(f"line {sample['line']}: {sample['prompt']}")
        out.append(f"  reference:  {sample['reference']}")
        if "base" in sample:
            out.append(f"  base:       {sample['base']}")
        out.append(f"  fine-tuned: {sample['fine_tuned']}")
        out.append("")
    return "\n".join(out)
