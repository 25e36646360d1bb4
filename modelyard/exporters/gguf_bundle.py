"""``export(run, format="gguf")``: a generation run as a versioned GGUF bundle, gated and scored.

The run's model is merged (as ``modelyard export RUN --merged DIR`` writes it), written as one
GGUF file (:func:`modelyard.exporters.gguf.write_gguf`) and loaded into llama.cpp beside the
merged model in torch (fp32). F32 and F16 files must continue the validation prompts as torch
does (the parity gate, :mod:`modelyard.exporters.gguf_quality`); a file that does not is no
bundle. Every file is scored: validation perplexity from the engine's logits against torch's
on the same tokens, and ROUGE-L of its answers to the test prompts against the run's own. A
variant past either budget is written, marked ``rejected`` with the reason, as compress marks
an ONNX variant.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modelyard
from modelyard.bundle import Bundle, GenerationSpec, generative_manifest, write_bundle
from modelyard.config import CausalLMConfig
from modelyard.errors import BundleError
from modelyard.exporters.gguf import gguf_type, write_gguf
from modelyard.exporters.gguf_quality import (
    TIE_NATS,
    ScoringData,
    check_parity,
    engine_perplexity,
    score_test,
    torch_reference,
)
from modelyard.runs import Run, recorded_test_metrics
from modelyard.staging import staging_dir
from modelyard.tokenize.pretrained import PACKAGE_PREFIX

log = logging.getLogger("modelyard.export")

ENGINE = "llama.cpp"
MODEL_FILE = "model.gguf"
# context per request when the model's positions allow it: what a served chat may hold, prompt
# and answer, beyond the run's tokenizer.max_length (the longest training record). The server
# reserves it per slot: SmolLM2-135M's KV cache (F16) takes 23 KB a token, 47 MB at 2048.
SERVED_CONTEXT = 2048
# the specials llama.cpp ends a generation at besides EOS (llama-vocab.cpp names the same)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
# test answers may lose this many ROUGE-L points against the run's (the issue asks <= 0.5 of
# Q8_0; 1.0 is compress.max_accuracy_drop's default for every task)
DEFAULT_MAX_DROP = 1.0
DEFAULT_MAX_PERPLEXITY_RISE = 10.0  # % (config compress.max_perplexity_rise)
# llama.cpp's threads while GGUF files are scored and timed (export, compress, run); None: one
# per core. Tests set 1: llama.cpp's spinning threads crawl on a shared machine.
ENGINE_THREADS: int | None = None


def export_gguf_bundle(
    run: Run,
    *,
    repo: str | Path | None = None,
    which: str = "best",
    name: str | None = None,
    quantize: str | None = None,
    max_accuracy_drop: float | None = None,
    max_perplexity_rise: float | None = None,
    threads: int | None = None,
) -> Bundle:
    """Export a generation run as a GGUF bundle ``REPO/NAME/VERSION/`` (``model.gguf`` and a
    manifest with its generation section, parity record and quality scores).

    Args:
        run: a generation run.
        repo: the model repository; default: the run config's ``export.repo``.
        which: the checkpoint, ``best`` or ``last``.
        name: the model name in the repository; default: the run's name.
        quantize: a GGUF type, ``f16`` (default), ``q8_0``, ``q4_0`` or ``f32``.
        max_accuracy_drop: ROUGE-L points the test answers may lose against the run's;
            default: the config's ``compress.max_accuracy_drop``.
        max_perplexity_rise: % the engine's validation perplexity may exceed torch's;
            default: the config's ``compress.max_perplexity_rise``.
        threads: llama.cpp's threads while scoring (default: :data:`ENGINE_THREADS`).

    Returns:
        The written :class:`Bundle`; ``manifest.variant["rejected"]`` says why it is rejected,
        or is ``None``.

    Raises:
        BundleError: an unknown or unwritable GGUF type (K-quants: why, and which types fit),
            or an unquantized file that does not continue the prompts as torch does; no bundle
            is left behind.
    """
    from modelyard.training.generative import load_generative_run

    quantization = (quantize or "f16").lower()
    gguf_type(quantization)  # an unknown type is refused before the model is merged
    config = run.config
    data = scoring_data(run)
    name = name or config.name
    repo = Path(repo if repo is not None else config.export.repo)
    with staging_dir(repo / name) as scratch:
        merged = load_generative_run(run.dir, which)[1].model.merge_and_save(scratch / "merged")
        written = write_gguf(merged, scratch / MODEL_FILE, quantization=quantization, name=name)
        threads = ENGINE_THREADS if threads is None else threads
        spec, checked = check_against_torch(
            written.path, merged, config, data, quantization, threads
        )
        if checked.parity is not None and checked.parity["mismatches"]:
            raise BundleError(parity_failure(name, quantization, checked.parity))
        cfg = config.compress
        quality = judge(
            checked.perplexity,
            checked.reference_perplexity,
            checked.test,
            recorded_test_metrics(run) or {},
            max_drop=_or(max_accuracy_drop, cfg.max_accuracy_drop),
            max_rise=_or(max_perplexity_rise, cfg.max_perplexity_rise),
        )
        counts = {"scored_answers": checked.scored, "validation": len(data.validation)}
        variant = {
            "name": f"gguf-{quantization}",
            "quantization": quantization,
            "kept_f16": list(written.kept_f16),
            "quality": {**quality, **counts, "test": len(data.test or [])},
            "rejected": quality["rejected"],
        }
        metrics = {"val_perplexity": checked.perplexity, **checked.test}
        manifest = generative_manifest(
            name,
            spec,
            format="gguf",
            model_file=MODEL_FILE,
            pad_id=checked.pad_id,
            metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
            variant=variant,
            parity=checked.parity,
            config=config.model_dump(mode="json"),
            source=str(run.dir),
            modelyard_version=modelyard.__version__,
        )
        return write_bundle(repo, manifest, {MODEL_FILE: written.path})


@dataclass(frozen=True)
class Checked:
    """A GGUF file beside the merged model in torch.

    Attributes:
        parity: the parity record (F32, F16; None for quantized files).
        perplexity: the engine's validation perplexity.
        reference_perplexity: torch's, on the same tokens.
        scored: validation answers the engine reported token by token.
        test: ``rouge_l``, ``exact_match`` of the engine's test answers (empty: no test file).
        pad_id: the tokenizer's padding id.
    """

    parity: dict[str, Any] | None
    perplexity: float
    reference_perplexity: float
    scored: int
    test: dict[str, float]
    pad_id: int


def check_against_torch(
    path: Path,
    merged: Path,
    config: Any,
    data: ScoringData,
    quantization: str,
    threads: int | None,
) -> tuple[GenerationSpec, Checked]:
    """Load the merged directory in torch (fp32) and the GGUF file in llama.cpp, and compare
    (:mod:`modelyard.exporters.gguf_quality`). Returns the bundle's generation section too."""
    import torch
    import transformers

    from modelyard.runtime.llama_cpp import LlamaCppGenerator

    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(str(merged))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    model.eval()
    spec = generation_spec(config, merged, tokenizer, quantization)
    stop_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in spec.stop_tokens]
    log.info("export: torch's answers to %d validation records", len(data.validation))
    reference = torch_reference(model, tokenizer, data, stop_ids)
    with LlamaCppGenerator(path, context_length=spec.context_length, threads=threads) as engine:
        parity = None
        if quantization in TIE_NATS:
            parity = check_parity(engine, model, tokenizer, reference, quantization)
            if parity["mismatches"]:
                return spec, Checked(parity, math.nan, reference.perplexity, 0, {}, 0)
        log.info("export: scoring %s through llama.cpp", quantization)
        perplexity, scored = engine_perplexity(engine, reference.prompts, reference.answers)
        test = {}
        if data.test:
            test = score_test(engine, tokenizer, data.test, data.max_new_tokens)
    pad_id = int(tokenizer.pad_token_id or 0)
    return spec, Checked(parity, perplexity, reference.perplexity, scored, test, pad_id)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def scoring_data(run: Run) -> ScoringData:
    """The run's validation records (as prompts with answers) and test records."""
    from modelyard.data.chat import GenerationInput
    from modelyard.training.generative import read_records

    records = read_records(run.config)
    validation = [
        GenerationInput(turns[:-1], None, turns[-1]["content"], c.format, c.source, c.line)
        for c in records.validation
        if (turns := c.messages)  # a plain-text record has no answer to score
    ]
    if not validation:
        raise BundleError(
            f"{run.dir}: no validation record with an answer to check the GGUF file on (plain "
            "text records are continued, not answered)"
        )
    limit = int(run.info.get("max_new_tokens", 64))
    return ScoringData(validation, records.test, limit)


def generation_spec(config: Any, merged: Path, tokenizer: Any, quantization: str) -> GenerationSpec:
    """The manifest's generation section for a run's merged directory."""
    settings = json.loads((merged / "config.json").read_text())
    positions = int(settings.get("max_position_embeddings", SERVED_CONTEXT))
    trained = int(config.tokenizer.max_length)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    model = config.model
    base = model.path if isinstance(model, CausalLMConfig) else str(merged)
    return GenerationSpec(
        engine=ENGINE,
        context_length=min(positions, max(trained, SERVED_CONTEXT)),
        chat_template=template,
        stop_tokens=stop_tokens(tokenizer, merged),
        base_model=base,
        licence=licence_of(base),
        quantization=quantization,
    )


def stop_tokens(tokenizer: Any, merged: Path) -> list[str]:
    """EOS, the generation config's end ids, and the end-of-turn specials in the vocabulary."""
    ids: list[int] = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    generation = merged / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        ids += [int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN if t in vocab]
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(ids)))


def licence_of(base: str) -> str | None:
    """The base model's licence as its source states it: ``package:NAME``'s package metadata,
    a directory's model card (``README.md`` front matter ``license:``); None when unstated."""
    if base.startswith(PACKAGE_PREFIX):
        try:
            meta = importlib.metadata.metadata(base.removeprefix(PACKAGE_PREFIX))
        except importlib.metadata.PackageNotFoundError:
            return None
        stated = meta.get_all("License-Expression") or meta.get_all("License") or [None]
        return stated[0] or None
    card = Path(base) / "README.md"
    if not card.is_file():
        return None
    front = re.match(r"---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    found = re.search(r"^license:\s*(\S.*?)\s*$", front.group(1), re.M) if front else None
    return found.group(1).strip("'\"") if found else None


def judge(
    perplexity: float,
    reference_perplexity: float,
    test: dict[str, float],
    run_test: dict[str, float],
    *,
    max_drop: float,
    max_rise: float,
) -> dict[str, Any]:
    """The quality record: perplexity rise (%) and ROUGE-L drop (points) against the run, and
    why the variant is rejected (None: it is not)."""
    rise = 100.0 * (perplexity - reference_perplexity) / reference_perplexity
    ours, theirs = test.get("rouge_l", math.nan), run_test.get("rouge_l", math.nan)
    drop = 100.0 * (theirs - ours)
    reasons = []
    if not rise <= max_rise:
        reasons.append(f"validation perplexity {rise:+.2f}% > {max_rise:g}%")
    if math.isfinite(drop) and drop > max_drop:
        reasons.append(f"test ROUGE-L drop {drop:.2f} points > {max_drop:g}")
    return {
        "val_perplexity": perplexity,
        "reference_perplexity": reference_perplexity,
        "perplexity_rise": rise,
        "rouge_l": ours,
        "reference_rouge_l": theirs,
        "rouge_l_drop": drop,
        "max_perplexity_rise": max_rise,
        "max_accuracy_drop": max_drop,
        "rejected": "; ".join(reasons) or None,
    }


def parity_failure(name: str, quantization: str, parity: dict[str, Any]) -> str:
    first = parity["mismatches"][0]
    where = f"validation prompt {first['prompt']}, token {first['position']}"
    if "gap" in first:
        where += (
            f": torch says {first['torch']}, llama.cpp {first['engine']}, "
            f"{first['gap']:.3g} nats apart (ties allowed up to {parity['tie_nats']:g})"
        )
    return (
        f"{name}: the {quantization} GGUF file does not continue the validation prompts as the "
        f"run's model does in torch ({len(parity['mismatches'])} of {parity['prompts']} prompts "
        f"differ; first at {where}); no bundle written"
    )
