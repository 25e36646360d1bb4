"""One typed config tree: YAML in, ``--set key=value`` overrides on top, clear errors out.

The pydantic models below are the source of truth for every setting. Every model forbids unknown
keys; :func:`load_config` turns pydantic's errors into :class:`ConfigError` messages that name the
key path (``model.hidden_size``) and, for unknown keys, the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.errors import ConfigError

Task = Literal["binary", "multiclass", "multilabel", "regression"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "regression")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic takes true/false as 1/0 for a number; `epochs: true` is a mistake, not 1
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{name}: expected a number, got the boolean {value}")
        return data


def _numeric(annotation: Any) -> bool:
    """True for int / float / a union of them with None (not for bool or anything else)."""
    args = get_args(annotation) or (annotation,)
    kinds = {a for a in args if a is not type(None)}
    return bool(kinds) and kinds <= {int, float}


# --------------------------------------------------------------------------------------- data
class CleanConfig(_Strict):
    """Optional text cleaning applied before tokenization (and again by the runtime)."""

    unicode: Literal["none", "NFC", "NFKC"] = "none"
    lowercase: bool = False
    strip_html: bool = False


class DataConfig(_Strict):
    """Where the examples come from and which columns hold text and target."""

    train: str
    validation: str | None = None
    test: str | None = None
    text: str = "text"
    label: str = "label"
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    encoding: str = "utf-8"
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    labels: list[str] | None = None  # fixed class order; default: sorted as found
    label_delimiter: str | None = None  # multilabel labels given as "a|b|c"
    skip_bad_rows: bool = False
    clean: CleanConfig = CleanConfig()


# ---------------------------------------------------------------------------------- tokenizer
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class TokenizerConfig(_Strict):
    """How text becomes ids. Every kind is saved as one HF ``tokenizer.json``.

    ``padding_side`` / ``truncation_side`` default to ``right``: our models mask padding, so the
    side does not change a prediction, and keeping the beginning of a long text is what most
    readers (and pretrained encoders) expect. Keras pads and truncates at the front (``left``);
    ``examples/seed.yaml`` sets that to reproduce the recipe exactly.
    """

    kind: Literal["word", "bpe", "wordpiece", "pretrained"] = "word"
    num_words: int = Field(10000, ge=3)  # word: keep the num_words-1 most frequent ids, 0 = pad
    vocab_size: int = Field(8000, ge=50)  # bpe / wordpiece
    min_frequency: int = Field(1, ge=1)
    oov_token: str = "<OOV>"
    pad_token: str = "<PAD>"
    lowercase: bool = True
    filters: str = KERAS_FILTERS  # word: characters removed, as Keras' Tokenizer(filters=...)
    max_length: int = Field(100, ge=1, le=8192)
    padding_side: Literal["left", "right"] = "right"
    truncation_side: Literal["left", "right"] = "right"
    path: str | None = None  # pretrained: a model directory holding tokenizer.json, or package:NAME


# ------------------------------------------------------------------------------------- models
# How a model's weights start (``modelyard.models.initialization``): ``keras`` is what the seed
# recipe's Keras layers do (embeddings U(-0.05, 0.05), Glorot-uniform kernels, orthogonal
# recurrent kernels, zero biases, LSTM forget-gate bias 1); ``torch`` keeps PyTorch's per-layer
# defaults (embeddings N(0, 1)). Measured in docs/benchmarks.md ("Initialisation").
Init = Literal["keras", "torch"]


class RNNConfig(_Strict):
    kind: Literal["lstm", "gru"]
    init: Init = "keras"
    embedding_dim: int = Field(128, ge=1)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1, le=8)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pooling: Literal["last", "mean", "max"] = "last"


class CNNConfig(_Strict):
    kind: Literal["cnn"]
    init: Init = "keras"
    embedding_dim: int = Field(128, ge=1)
    num_filters: int = Field(100, ge=1)
    kernel_sizes: list[int] = Field(default_factory=lambda: [3, 4, 5], min_length=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("kernel_sizes")
    @classmethod
    def _positive_kernels(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"kernel sizes must be >= 1, got {v}")
        return v


class TransformerConfig(_Strict):
    kind: Literal["transformer"]
    init: Init = "keras"
    embedding_dim: int = Field(128, ge=1)  # d_model
    num_layers: int = Field(2, ge=1, le=24)
    num_heads: int = Field(4, ge=1)
    ff_size: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    pooling: Literal["mean", "cls", "max"] = "mean"

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                f"embedding_dim ({self.embedding_dim}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        return self


class LoRAConfig(_Strict):
    """LoRA adapters (``peft``) on the encoder, base weights frozen; merged before export."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)


class PretrainedModelConfig(_Strict):
    """A local Hugging Face encoder (config.json, safetensors, tokenizer.json) with a task head.

    ``path``: the directory, or ``package:NAME`` (that package's ``get_model_path()``), resolved
    when the model is built, so a config naming an absent package still validates.
    """

    kind: Literal["pretrained"]
    path: str = Field(min_length=1)
    pooling: Literal["cls", "mean"] = "mean"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # on the pooled features, before the head
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0)  # the first N encoder layers keep their weights
    gradient_checkpointing: bool = False
    lora: LoRAConfig | None = None  # adapters instead of full fine-tuning


class BagOfNgramsConfig(_Strict):
    """fastText-style bag of words and hashed word n-grams (``models/bag_of_ngrams.py``)."""

    kind: Literal["bag_of_ngrams"]
    init: Init = "keras"
    embedding_dim: int = Field(64, ge=1)
    ngrams: int = Field(2, ge=1, le=3)  # longest word n-gram: 1 = words only, 2 = + bigrams
    buckets: int = Field(2**16, ge=1, le=2**22)  # hashed n-gram embeddings (shared by all n)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the averaged vector


ModelConfig = Annotated[
    Union[RNNConfig, CNNConfig, TransformerConfig, BagOfNgramsConfig, PretrainedModelConfig],
    Field(discriminator="kind"),
]
MODEL_KINDS: tuple[str, ...] = ("lstm", "gru", "cnn", "transformer", "bag_of_ngrams", "pretrained")


# ------------------------------------------------------------------------------------- train
class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = Field(1e-8, gt=0.0)
    # layer-wise lr decay: layer i of L gets lr * layer_decay ** (L + 1 - i), embeddings i = 0
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer name 'sgd' and momentum > 0")
        return self


class ScheduleConfig(_Strict):
    name: Literal["constant", "linear", "cosine", "plateau"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear, cosine: linear warmup before decay
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # cosine / linear floor, as a share of lr
    factor: float = Field(0.5, gt=0.0, lt=1.0)  # plateau
    patience: int = Field(1, ge=0)  # plateau, in epochs
    monitor: str = "val_loss"  # plateau


class LossConfig(_Strict):
    """``auto`` picks by task: binary/multilabel → bce, multiclass → cross_entropy, else mse."""

    name: Literal["auto", "bce", "cross_entropy", "mse", "huber", "focal"] = "auto"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # cross_entropy
    class_weights: Literal["none", "balanced"] | list[float] = "none"  # cross_entropy, bce
    focal_gamma: float = Field(2.0, ge=0.0)
    huber_delta: float = Field(1.0, gt=0.0)


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(_Strict):
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_clip: float | None = Field(None, gt=0.0)  # max global grad norm
    grad_accum_steps: int = Field(1, ge=1)
    bucketing: bool = True  # length-bucketed batches, padded to the batch's longest text
    monitor: str = "val_loss"  # which validation metric picks the best checkpoint
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint_every_steps: int | None = Field(None, ge=1)  # mid-epoch checkpoints for resume
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16: training forward passes under autocast (weights, validation and export stay fp32)
    precision: Literal["fp32", "bf16"] = "fp32"
    num_threads: int | None = Field(None, ge=1)
    tensorboard: bool = False
    progress: bool = True

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


# ------------------------------------------------------------------ later stations (road ahead)
QUANTIZE_MODES: tuple[str, ...] = ("int8-dynamic", "int8-static", "fp16")


class CompressConfig(_Strict):
    prune: float | None = Field(None, ge=0.0, lt=1.0)
    prune_kind: Literal["unstructured", "structured"] = "unstructured"
    finetune_epochs: int = Field(0, ge=0)
    quantize: list[Literal["int8-dynamic", "int8-static", "fp16"]] = Field(default_factory=list)
    clip: float | None = Field(None, gt=0.0)
    max_accuracy_drop: float = Field(1.0, ge=0.0)  # points

    @field_validator("quantize", mode="before")
    @classmethod
    def _one_mode(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


ExportFormat = Literal["onnx", "tflite"]


def _default_formats() -> list[ExportFormat]:
    return ["onnx"]


class ExportConfig(_Strict):
    formats: list[ExportFormat] = Field(default_factory=_default_formats)
    repo: str = "models"
    opset: int = Field(18, ge=17)
    parity_atol: float = Field(1e-4, gt=0.0)


class TargetConfig(_Strict):
    format: Literal["onnx", "tflite"] = "onnx"
    max_size_mb: float | None = Field(None, gt=0.0)
    max_p99_ms: float | None = Field(None, gt=0.0)
    max_accuracy_drop: float | None = Field(None, ge=0.0)


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_batch_size: int = Field(64, ge=1)
    max_delay_ms: float = Field(5.0, ge=0.0)
    max_queue: int = Field(1024, ge=1)
    timeout_s: float = Field(10.0, gt=0.0)
    workers: int = Field(1, ge=1)
    api_key_file: str | None = None
    max_texts: int = Field(256, ge=1)
    max_text_chars: int = Field(20000, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1)
    poll_s: float = Field(2.0, gt=0.0)  # how often the repository is checked for new versions
    # ONNX Runtime threads per model. 1 by default: each model's batcher feeds whole batches to
    # one session, and ORT's spinning pool would compete with the event loop for the cores.
    intra_op_threads: int = Field(1, ge=1)


# --------------------------------------------------------------------------------------- root
class Config(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    task: Task
    seed: int = 13
    output_dir: str = "runs"
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = Field(default_factory=lambda: RNNConfig(kind="lstm"))
    train: TrainConfig = TrainConfig()
    compress: CompressConfig = CompressConfig()
    export: ExportConfig = ExportConfig()
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="before")
    @classmethod
    def _pretrained_tokenizer(cls, raw: Any) -> Any:
        # a pretrained encoder reads only its own vocabulary: tokenizer.kind and .path follow it
        model = raw.get("model") if isinstance(raw, dict) else None
        tokenizer = raw.get("tokenizer") if isinstance(raw, dict) else None
        tokenizer_raw = tokenizer is None or isinstance(tokenizer, dict)
        if isinstance(model, dict) and model.get("kind") == "pretrained" and tokenizer_raw:
            tokenizer = {"kind": "pretrained", "path": model.get("path"), **(tokenizer or {})}
            raw = {**raw, "tokenizer": tokenizer}
        return raw

    @model_validator(mode="after")
    def _pretrained_needs_its_tokenizer(self) -> Config:
        if self.model.kind == "pretrained" and self.tokenizer.kind != "pretrained":
            raise ValueError("model.kind 'pretrained' needs tokenizer.kind 'pretrained'")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ------------------------------------------------------------------------------------ loading
def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Read a config from a YAML file (or a dict), apply ``key.path=value`` overrides, validate.

    Raises:
        ConfigError: the file is missing or not YAML, an override is malformed, a key is unknown,
            or a value has the wrong type or an impossible value; the message names the key path.
    """
    if isinstance(source, dict):
        raw: Any = source
        where = "config"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level")
    raw = _deep_copy(raw)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, where)


def validate_config(raw: dict[str, Any], where: str = "config") -> Config:
    """Validate a raw dict into a :class:`Config`, with readable errors."""
    unknown = _unknown_keys(raw, Config, ())
    if unknown:
        path, valid = unknown[0]
        raise ConfigError(
            f"{where}: unknown key '{path}'; valid keys here: {', '.join(sorted(valid))}"
        )
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + _format_errors(exc)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def dump_config(config: Config) -> str:
    """The config as YAML, every default spelled out (what a run records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


_MODEL_BY_KIND: dict[str, type[BaseModel]] = {
    "lstm": RNNConfig,
    "gru": RNNConfig,
    "cnn": CNNConfig,
    "transformer": TransformerConfig,
    "pretrained": PretrainedModelConfig,
    "bag_of_ngrams": BagOfNgramsConfig,
}


def _unknown_keys(
    raw: Any, model: type[BaseModel], prefix: tuple[str, ...]
) -> list[tuple[str, list[str]]]:
    """Walk ``raw`` against the model tree; list unknown keys with the valid names beside them."""
    if not isinstance(raw, dict):
        return []
    found: list[tuple[str, list[str]]] = []
    fields = model.model_fields
    for key, value in raw.items():
        path = (*prefix, str(key))
        if key not in fields:
            found.append((".".join(path), list(fields)))
            continue
        child = _section_model(model, str(key), value)
        if child is not None:
            if model is Config and key == "targets" and isinstance(value, dict):
                for tname, tval in value.items():
                    found += _unknown_keys(tval, TargetConfig, (*path, str(tname)))
            else:
                found += _unknown_keys(value, child, path)
    return found


def _section_model(model: type[BaseModel], key: str, value: Any) -> type[BaseModel] | None:
    if model is Config and key == "model":
        kind = value.get("kind") if isinstance(value, dict) else None
        return _MODEL_BY_KIND.get(str(kind)) if kind is not None else None
    if model is Config and key == "targets":
        return TargetConfig
    annotation = model.model_fields[key].annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # drop the discriminator tag pydantic inserts for the model union (model.lstm.x -> model.x)
        if len(loc) >= 2 and loc[0] == "model" and loc[1] in MODEL_KINDS:
            loc = [loc[0], *loc[2:]]
        path = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            msg = f"unknown model kind; valid kinds: {', '.join(MODEL_KINDS)}"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing 'kind'; valid kinds: {', '.join(MODEL_KINDS)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {msg}{shown}")
    return "; ".join(lines)
