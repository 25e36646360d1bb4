"""How a GGUF file answers beside the run it was exported from: the parity gate and the scores.

- **Parity** (unquantized files, F32 and F16): llama.cpp's greedy continuation of the run's first
  validation prompts equals torch's on the merged model, token for token. A divergence where
  torch itself is torn (its top token and the engine's within :data:`TIE_NATS` of each other)
  is a tie of rounding, not a wrong weight: that prompt stops being compared there.
- **Perplexity** on the validation answers from the engine's own logits: each reference answer
  is forced on the engine with a GBNF grammar of its token ids (``<[id]>``: exactly the tokens
  torch scores, not another spelling of the same text), at temperature 0, and llama.cpp reports
  the log-probability of every token under the raw logits; the end token the model then chooses
  counts too, as in training's validation loss.
- **ROUGE-L / exact match** of llama.cpp's greedy answers to the test prompts, scored as the run
  scored its own (:func:`modelyard.training.generate.score_answers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelyard.data.chat import GenerationInput
from modelyard.errors import DataError
from modelyard.runtime.llama_cpp import LlamaCppGenerator, parse_answer
from modelyard.training.generate import prompt_text, score_answers

PARITY_PROMPTS = 8  # validation prompts the gate compares
PARITY_TOKENS = 16  # tokens compared per prompt
# how close (in log-probability) torch's top token and the engine's may be for a divergence to be
# a tie of rounding: F32 sums in another order (~1e-4 measured), F16 weights round at 2^-11
TIE_NATS = {"f32": 1e-3, "f16": 2e-2}


@dataclass(frozen=True)
class ScoringData:
    """What a GGUF export is checked and scored on.

    Attributes:
        validation: the run's validation records as prompts with their reference answers.
        test: the run's test records (None without a test file).
        max_new_tokens: the longest answer, as the run scored its test file.
    """

    validation: list[GenerationInput]
    test: list[GenerationInput] | None
    max_new_tokens: int


@dataclass(frozen=True)
class TorchReference:
    """The merged model in torch (fp32): what every GGUF variant is compared with.

    Attributes:
        prompts: the validation prompts as text (the chat template applied).
        parity: torch's greedy ids for the first :data:`PARITY_PROMPTS` prompts.
        answers: each validation answer's ids, the end token appended.
        perplexity: torch's perplexity of ``answers`` (every token weighs the same).
    """

    prompts: list[str]
    parity: list[list[int]]
    answers: list[list[int]]
    perplexity: float


def torch_reference(
    model: Any, tokenizer: Any, data: ScoringData, stop_ids: Sequence[int]
) -> TorchReference:
    """Greedy continuations and answer log-likelihoods of the merged model (fp32, batch 1: no
    padding in the numbers)."""
    prompts = [prompt_text(tokenizer, r) for r in data.validation]
    parity = [
        _greedy(model, _ids(tokenizer, p), stop_ids, PARITY_TOKENS)
        for p in prompts[:PARITY_PROMPTS]
    ]
    answers = [
        [*_ids(tokenizer, str(r.reference)), int(tokenizer.eos_token_id)] for r in data.validation
    ]
    total, count = 0.0, 0
    for prompt, answer in zip(prompts, answers, strict=True):
        logprobs = token_logprobs(model, _ids(tokenizer, prompt), answer)
        total, count = total + float(np.sum(logprobs)), count + len(answer)
    return TorchReference(prompts, parity, answers, _perplexity(total, count))


@torch.no_grad()
def token_logprobs(model: Any, prompt: list[int], tokens: Sequence[int]) -> np.ndarray:
    """Torch's log-probability of each of ``tokens`` after ``prompt`` (teacher-forced)."""
    ids = torch.tensor([prompt + list(tokens)])  # (1, T)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (len(tokens), V)
    picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(list(tokens))[:, None])
    return picked[:, 0].numpy()


def check_parity(
    generator: LlamaCppGenerator,
    model: Any,
    tokenizer: Any,
    reference: TorchReference,
    quantization: str,
) -> dict[str, Any]:
    """Compare the engine's greedy continuations with torch's.

    Returns:
        The record for ``manifest.parity``: prompts and tokens compared, ties, the widest tie,
        and ``mismatches`` (prompt index, position, torch's and the engine's token, the gap in
        log-probability) for divergences that are not ties; empty when the file passes.
    """
    tie = TIE_NATS[quantization]
    compared, ties, widest = 0, 0, 0.0
    mismatches: list[dict[str, Any]] = []
    for index, want in enumerate(reference.parity):
        prompt = reference.prompts[index]
        got = generator.generate(prompt, max_tokens=PARITY_TOKENS).token_ids
        pairs = zip(want, got, strict=False)  # one may stop before the other
        same = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        if same is None:
            compared += min(len(want), len(got))
            if len(want) != len(got):  # one stopped where the other did not: a missing end
                mismatches.append({"prompt": index, "position": min(len(want), len(got))})
            continue
        compared += same + 1
        # torch's view at the divergence: how much less likely the engine's token is
        prefix = _ids(tokenizer, prompt) + want[:same]
        gap = _gap(model, prefix, want[same], got[same])
        if gap <= tie:
            ties, widest = ties + 1, max(widest, gap)
            continue
        at = {"prompt": index, "position": same, "torch": want[same], "engine": got[same]}
        mismatches.append({**at, "gap": gap})
    return {
        "prompts": len(reference.parity),
        "tokens": compared,
        "ties": ties,
        "widest_tie": widest,
        "tie_nats": tie,
        "mismatches": mismatches,
    }


@torch.no_grad()
def _gap(model: Any, prefix: list[int], want: int, got: int) -> float:
    logits = model(input_ids=torch.tensor([prefix])).logits[0, -1].float()  # (V,)
    logprobs = torch.log_softmax(logits, -1)
    return float(logprobs[want] - logprobs[got])


def engine_perplexity(
    generator: LlamaCppGenerator, prompts: Sequence[str], answers: Sequence[Sequence[int]]
) -> tuple[float, int]:
    """The engine's perplexity of each answer after its prompt (see the module's note).

    Returns:
        The perplexity and how many answers the engine reported token by token (an answer whose
        bytes end mid-character is reported merged, so its tokens cannot be counted).
    """
    total, count, scored = 0.0, 0, 0
    for prompt, answer in zip(prompts, answers, strict=True):
        forced = answer[:-1]  # the end token is the model's own choice once the grammar is done
        body = {
            "prompt": prompt,
            "max_tokens": len(answer),
            "temperature": 0.0,
            "cache_prompt": False,
            "logprobs": 1,
            "grammar": "root ::= " + " ".join(f"<[{int(t)}]>" for t in forced),
        }
        try:
            generation = parse_answer(generator.engine.handle_completions(body), chat=False)
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"llama.cpp refused to score an answer: {exc}") from exc
        if generation.token_ids[: len(forced)] != list(forced):
            continue
        logprobs = [t.logprob for t in generation.tokens[: len(answer)]]
        total, count, scored = total + sum(logprobs), count + len(logprobs), scored + 1
    return _perplexity(total, count), scored


def engine_answers(
    generator: LlamaCppGenerator, tokenizer: Any, inputs: Sequence[GenerationInput], limit: int
) -> list[str]:
    """llama.cpp's greedy answers to ``inputs`` (the prompts torch answered), stripped."""
    return [
        generator.generate(prompt_text(tokenizer, r), max_tokens=limit).text.strip() for r in inputs
    ]


def score_test(
    generator: LlamaCppGenerator, tokenizer: Any, inputs: Sequence[GenerationInput], limit: int
) -> dict[str, float]:
    """``rouge_l`` and ``exact_match`` of the engine's answers to the test records."""
    answers = engine_answers(generator, tokenizer, inputs, limit)
    return score_answers(answers, [str(r.reference) for r in inputs])


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def _greedy(model: Any, prompt: list[int], stop_ids: Sequence[int], limit: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=limit,
        do_sample=False,
        eos_token_id=list(stop_ids),
        pad_token_id=stop_ids[0],
    )
    return [int(t) for t in out[0, len(prompt) :]]


def _perplexity(total_logprob: float, count: int) -> float:
    return math.exp(min(-total_logprob / max(count, 1), 50.0)) if count else math.nan
