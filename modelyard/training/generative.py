"""A generative run: a pretrained causal LM fine-tuned on conversations, on the same loop.

``setup_generative`` reads the records (chat, prompt/completion or plain text; file:line errors),
loads the model and its tokenizer, encodes every record once with the tokenizer's chat template
(answer-only labels by default) and returns a :class:`Session` that ``epochs.fit`` trains like
any other: length-bucketed batches, the configured precision, accumulation, schedule, early
stopping, checkpoints and exact resume, ``--nproc``. What differs is held by the session:

- the batch function (:class:`ChatBatches`) hands the model the positions whose next token is
  learnt, so logits are computed for those alone;
- validation (:func:`validate_tokens`) is the mean cross-entropy per learnt token over the
  whole split (``val_loss``) and its perplexity;
- checkpoints hold the trained weights only (the LoRA adapters; the base is the config's);
- ``finish_generative`` generates answers for the test file with the best checkpoint and with
  the base model, and scores both (``generate.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modelyard.config import CausalLMConfig, Config
from modelyard.data import LabelSpace, random_split, read_conversations, read_generation_inputs
from modelyard.data.chat import Conversation, GenerationInput
from modelyard.errors import ConfigError, RunError
from modelyard.models.causal_lm import CausalLM, LoadedCausalLM, load_causal_lm
from modelyard.plots import plot_learning_curves
from modelyard.runs import Run, RunPaths
from modelyard.tasks import get_task
from modelyard.tokenize.chat import encode_conversations
from modelyard.training.checkpoint import load_weights, restore_checkpoint
from modelyard.training.collate import ChatBatches, ChatSplit, Data
from modelyard.training.distributed import World, seed_rank
from modelyard.training.environment import seed_everything
from modelyard.training.generate import (
    GenerationResult,
    check_references,
    evaluate_generation,
    generate_answers,
    generation_autocast,
    prompt_text,
)
from modelyard.training.prepare import (
    Monitoring,
    build_trainer,
    check_settings,
    open_run_dir,
    start,
)
from modelyard.training.state import Session, write_run_json

log = logging.getLogger("modelyard.training")

MONITORS = ["val_loss", "val_perplexity"]
# the longest answer generated when scoring: the train answers' 99th percentile, with room
MAX_NEW_TOKENS_FLOOR, MAX_NEW_TOKENS_CEILING = 16, 256


@dataclass(frozen=True)
class Records:
    """A generative run's records: train and validation conversations, test inputs (or None)."""

    train: list[Conversation]
    validation: list[Conversation]
    test: list[GenerationInput] | None


def read_records(config: Config) -> Records:
    """Read the train, validation and test files the config names.

    Without ``data.validation`` a seeded random ``data.validation_split`` of train is held out.

    Raises:
        DataError: a record is malformed (file:line), or a test record has no reference answer.
        ConfigError: no validation records.
    """
    data = config.data
    fmt = "auto" if data.format in ("auto", "parquet") else data.format

    def read(path: str) -> list[Conversation]:
        return read_conversations(path, format=fmt, encoding=data.encoding)

    train = read(data.train)
    if data.validation is not None:
        validation = read(data.validation)
    else:
        split = random_split(len(train), data.validation_split, seed=config.seed)
        validation = [train[i] for i in split.validation]
        train = [train[i] for i in split.train]
    if not validation:
        raise ConfigError(
            "training needs validation records (for val_loss, the best checkpoint and early "
            "stopping): set data.validation or data.validation_split > 0"
        )
    test = None
    if data.test is not None:
        test = read_generation_inputs(data.test, format=fmt, encoding=data.encoding)
        check_references(test)
    return Records(train, validation, test)


def chat_split(tokenizer: Any, records: Sequence[Conversation], config: Config) -> ChatSplit:
    """Encode records once (the tokenizer's chat template, ``data.train_on`` labels)."""
    max_length = int(config.tokenizer.max_length)
    enc = encode_conversations(
        tokenizer, records, max_length=max_length, train_on=config.data.train_on
    )
    if enc.num_truncated:
        log.warning(
            "%d of %d records are longer than tokenizer.max_length %d and were cut at the right "
            "(the first: %s)",
            enc.num_truncated,
            len(enc),
            max_length,
            enc.truncated[0],
        )
    lengths = np.fromiter((len(s) for s in enc.input_ids), dtype=np.int64, count=len(enc))
    source = records[0].source if records else ""
    return ChatSplit(enc.input_ids, enc.labels, lengths, source)


def answer_budget(split: ChatSplit) -> int:
    """How many tokens a generated answer may have: 1.5x the 99th percentile of the learnt
    tokens per train record, within [16, 256]."""
    p99 = float(np.percentile(split.learnt, 99)) if len(split) else 0.0
    return int(min(MAX_NEW_TOKENS_CEILING, max(MAX_NEW_TOKENS_FLOOR, math.ceil(1.5 * p99))))


def causal_config(config: Config) -> CausalLMConfig:
    """The config's causal LM section (the config checks that a generative task has one)."""
    model = config.model
    if not isinstance(model, CausalLMConfig):
        raise ConfigError(f"task {config.task!r} needs model.kind causal_lm, not {model.kind!r}")
    return model


def check_context(model: CausalLM, max_length: int) -> None:
    """Raises ConfigError when ``tokenizer.max_length`` exceeds the model's positions."""
    positions = getattr(model.base_model.config, "max_position_embeddings", None)
    if positions is not None and max_length > int(positions):
        raise ConfigError(
            f"tokenizer.max_length ({max_length}) is longer than the model's {positions} positions"
        )


def setup_generative(
    config: Config, *, resume: bool = False, overwrite: bool = False, world: World | None = None
) -> Session:
    """Prepare a generative run (see :func:`.prepare.setup`, whose arguments it takes).

    Everything that can fail on the data or the model (a malformed record, a prompt longer than
    ``tokenizer.max_length``, a model path that does not load) fails before the run directory
    is touched.
    """
    paths = RunPaths(config.run_dir)
    world = world if world is not None else World()
    device = check_settings(config, world)
    records = read_records(config)
    watch = Monitoring.resolve(config, MONITORS)
    # the adapters' initial weights depend on the seed alone
    seed_everything(config.seed)
    loaded = load_causal_lm(causal_config(config))
    check_context(loaded.model, int(config.tokenizer.max_length))
    tok = loaded.tokenizer
    train = chat_split(tok, records.train, config)
    validation = chat_split(tok, records.validation, config)
    open_run_dir(config, paths, world, resume=resume, overwrite=overwrite)
    model = loaded.model.to(device)
    seed_rank(world, config.seed)
    data: Data[ChatSplit] = Data(
        train=train,
        validation=validation,
        batch=ChatBatches(int(tok.pad_token_id), device),
        test=records.test,
    )
    trainer = build_trainer(config, model, data.train, 0, device, schedule=watch.schedule)
    labels = LabelSpace(task=config.task, labels=[])
    session = Session(
        config=config,
        paths=paths,
        labels=labels,
        tokenizer=tok,
        model_info={
            "labels": [],
            "label_space": labels.to_dict(),
            "base_model": causal_config(config).path,
            "adapters": model.has_adapters,
            "vocab_size": len(tok),
            "max_length": int(config.tokenizer.max_length),
            "pad_id": int(tok.pad_token_id),
            "max_new_tokens": answer_budget(train),
            "learnt_tokens": {
                "train": int(train.learnt.sum()),
                "validation": int(validation.learnt.sum()),
            },
        },
        data=data,
        trainer=trainer,
        best=watch.best,
        early_stopping=watch.early_stopping,
        world=world,
        validator=validate_tokens,
    )
    if resume:
        restore_checkpoint(session)
    start(session)
    return session


@torch.no_grad()
def validate_tokens(session: Session, split: ChatSplit | None = None) -> dict[str, float]:
    """``val_loss``: the mean cross-entropy per learnt token over the whole split (every token
    weighs the same, whatever its batch); ``val_perplexity``: its exponential."""
    data, parts = session.data, session.trainer
    split = split if split is not None else data.validation
    model = parts.model
    was_training = model.training
    model.eval()
    order = np.argsort(split.lengths, kind="stable")
    size = session.config.train.batch_size
    dtype, device_type = parts.autocast, data.batch.device.type
    total, count = 0.0, 0
    try:
        for start_at in range(0, len(order), size):
            batch = data.batch(split, order[start_at : start_at + size])
            with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                logits = model(*batch.inputs)  # (N, V)
            loss = F.cross_entropy(logits.float(), batch.targets, reduction="sum")
            total += float(loss)
            count += int(batch.targets.numel())
    finally:
        model.train(was_training)
    mean = total / max(count, 1)
    return {"val_loss": mean, "val_perplexity": math.exp(min(mean, 50.0))}


def finish_generative(session: Session) -> Run:
    """Mark the run complete, draw the learning curves, and score the best checkpoint's answers
    to the test file beside the base model's (``eval/``).

    Returns:
        The :class:`Run`, read back from disk.
    """
    paths, config = session.paths, session.config
    write_run_json(session, "completed")
    run = Run.load(paths.dir)
    if run.history:
        plot_learning_curves(
            run.history, paths.eval_dir / "learning_curves.png", title=paths.dir.name
        )
    inputs = session.data.test  # read (and checked) by setup
    if not isinstance(inputs, list):
        return run
    model = session.trainer.model
    load_weights(paths.weights("best"), model)
    result = evaluate_generation(
        LoadedCausalLM(model, session.tokenizer),  # type: ignore[arg-type]
        inputs,
        config.train.precision,
        causal_config(config),
        max_new_tokens=int(session.model_info["max_new_tokens"]),
        out_dir=paths.eval_dir,
        progress=config.train.progress,
    )
    _log_result(result)
    run.test_metrics = dict(result.metrics)
    run.test_size = result.num_examples
    return run


def _log_result(result: GenerationResult) -> None:
    line = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    log.info("test (%s, %d records): %s", result.source, result.num_examples, line)
    if result.base_metrics is not None:
        base = "  ".join(f"{k} {v:.4f}" for k, v in result.base_metrics.items())
        log.info("base model, before fine-tuning: %s", base)


def load_generative_run(run_dir: Any, which: str = "best") -> tuple[Run, LoadedCausalLM]:
    """A generative run's model: the base the config names, with the run's trained weights.

    Raises:
        RunError: not a generative run, or its checkpoint is missing or does not fit.
    """
    run = Run.load(run_dir)
    if not get_task(run.task).generative:
        raise RunError(f"{run.dir}: a {run.task} run scores texts; it does not generate")
    loaded = load_causal_lm(causal_config(run.config))
    load_weights(run.paths.weights(which), loaded.model)
    loaded.model.eval()
    return run, loaded


def evaluate_generative_run(
    run_dir: Any, data: str | None = None, *, which: str = "best", base: bool = True
) -> GenerationResult:
    """Score a generative run's answers on its test file (or ``data``), the base model's beside
    them; a run's own test file rewrites its ``eval/``.

    Raises:
        RunError: not a generative run. DataError: a record has no reference answer.
        ConfigError: no data to score (the run has no test file and ``data`` is None).
    """
    run, loaded = load_generative_run(run_dir, which)
    source = data if data is not None else run.config.data.test
    if source is None:
        raise ConfigError(
            f"{run.dir}: the run has no test file; give one with --data FILE (chat JSONL, "
            "prompt/completion JSONL or CSV)"
        )
    inputs = read_generation_inputs(source, encoding=run.config.data.encoding)
    return evaluate_generation(
        loaded,
        inputs,
        run.config.train.precision,
        causal_config(run.config),
        max_new_tokens=int(run.info.get("max_new_tokens", 64)),
        out_dir=run.paths.eval_dir if data is None else None,
        base=base,
    )


def generate_for_run(
    run_dir: Any,
    inputs: Sequence[GenerationInput],
    *,
    which: str = "best",
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> list[str]:
    """The run's greedy answers to ``inputs`` (each record's last user turn, prompt or text), in
    order.

    Args:
        max_new_tokens: the longest answer (default: what the run scored its test file with).
    """
    run, loaded = load_generative_run(run_dir, which)
    prompts = [prompt_text(loaded.tokenizer, r) for r in inputs]
    limit = max_new_tokens or int(run.info.get("max_new_tokens", 64))
    device = next(loaded.model.parameters()).device
    return generate_answers(
        loaded.model.lm,
        loaded.tokenizer,
        prompts,
        max_new_tokens=limit,
        batch_size=batch_size,
        autocast=generation_autocast(run.config.train.precision, device),
    )
