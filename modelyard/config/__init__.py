"""One typed config tree: YAML in, ``--set key=value`` overrides on top, clear errors out.

The pydantic models below are the source of truth for every setting. Every model forbids unknown
keys; :func:`load_config` turns pydantic's errors into :class:`ConfigError` messages that name the
key path (``model.hidden_size``) and, for unknown keys, the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from modelyard.config.base import StrictModel
from modelyard.config.data import KERAS_FILTERS, CleanConfig, DataConfig, TokenizerConfig
from modelyard.config.deploy import (
    EXPORT_FORMATS,
    EXPORT_QUANTIZE_MODES,
    GENERATIVE_FORMATS,
    GGUF_TYPES,
    QUANTIZE_MODES,
    REFERENCE_FORMAT,
    CompressConfig,
    ExportConfig,
    ExportFormat,
    QuantizeMode,
    ServeConfig,
    TargetConfig,
    formats_for,
)
from modelyard.config.families import (
    CHAR_TOKENIZER_KINDS,
    GENERATIVE_KINDS,
    MODEL_CONFIGS,
    MODEL_KINDS,
    NO_TFLITE_KINDS,
    OWN_TOKENIZER_KINDS,
    BagOfNgramsConfig,
    CausalLMConfig,
    CausalLMLoRAConfig,
    CNNConfig,
    Init,
    LinearNgramsConfig,
    LoRAConfig,
    ModelConfig,
    PretrainedModelConfig,
    RNNConfig,
    TransformerConfig,
)
from modelyard.config.training import (
    EarlyStoppingConfig,
    LossConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
)
from modelyard.errors import ConfigError
from modelyard.tasks import get_task, task_names

__all__ = [
    "CHAR_TOKENIZER_KINDS",
    "EXPORT_FORMATS",
    "EXPORT_QUANTIZE_MODES",
    "GENERATIVE_FORMATS",
    "GENERATIVE_KINDS",
    "GGUF_TYPES",
    "KERAS_FILTERS",
    "MODEL_CONFIGS",
    "MODEL_KINDS",
    "OWN_TOKENIZER_KINDS",
    "QUANTIZE_MODES",
    "REFERENCE_FORMAT",
    "BagOfNgramsConfig",
    "CNNConfig",
    "CausalLMConfig",
    "CausalLMLoRAConfig",
    "CleanConfig",
    "CompressConfig",
    "Config",
    "DataConfig",
    "EarlyStoppingConfig",
    "ExportConfig",
    "ExportFormat",
    "Init",
    "LinearNgramsConfig",
    "LoRAConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PretrainedModelConfig",
    "QuantizeMode",
    "RNNConfig",
    "ScheduleConfig",
    "ServeConfig",
    "StrictModel",
    "TargetConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TransformerConfig",
    "apply_override",
    "dump_config",
    "formats_for",
    "load_config",
    "validate_config",
]


# --------------------------------------------------------------------------------------- root
# tokenizer.max_length of a ``char`` tokenizer when the config sets none (characters, not words)
CHAR_MAX_LENGTH = 1024


class Config(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    task: str  # a name in the task registry (modelyard.tasks), checked below
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

    @field_validator("task")
    @classmethod
    def _registered_task(cls, name: str) -> str:
        get_task(name)  # ValueError naming the registered tasks
        return name

    @model_validator(mode="before")
    @classmethod
    def _pretrained_tokenizer(cls, raw: Any) -> Any:
        # a pretrained model reads only its own vocabulary: tokenizer.kind and .path follow it
        model = raw.get("model") if isinstance(raw, dict) else None
        tokenizer = raw.get("tokenizer") if isinstance(raw, dict) else None
        tokenizer_raw = tokenizer is None or isinstance(tokenizer, dict)
        own = isinstance(model, dict) and model.get("kind") in OWN_TOKENIZER_KINDS
        if isinstance(model, dict) and own and tokenizer_raw:
            tokenizer = {"kind": "pretrained", "path": model.get("path"), **(tokenizer or {})}
            raw = {**raw, "tokenizer": tokenizer}
        if isinstance(model, dict) and model.get("kind") in CHAR_TOKENIZER_KINDS and tokenizer_raw:
            tokenizer = {"kind": "char", **(tokenizer or {})}
            raw = {**raw, "tokenizer": tokenizer}
        if tokenizer_raw and isinstance(tokenizer, dict) and tokenizer.get("kind") == "char":
            # a character counts as a token: a text needs ~5x the ids a word tokenizer's does
            raw = {**raw, "tokenizer": {"max_length": CHAR_MAX_LENGTH, **tokenizer}}
        return raw

    @model_validator(mode="after")
    def _pretrained_needs_its_tokenizer(self) -> Config:
        if self.model.kind in OWN_TOKENIZER_KINDS and self.tokenizer.kind != "pretrained":
            raise ValueError(f"model.kind {self.model.kind!r} needs tokenizer.kind 'pretrained'")
        if self.model.kind in CHAR_TOKENIZER_KINDS and self.tokenizer.kind != "char":
            raise ValueError(
                f"model.kind {self.model.kind!r} reads characters: it needs tokenizer.kind "
                f"'char', not {self.tokenizer.kind!r}"
            )
        generative = get_task(self.task).generative
        if generative != (self.model.kind in GENERATIVE_KINDS):
            if generative:
                raise ValueError(
                    f"task {self.task!r} writes text: it needs model.kind "
                    f"{' | '.join(GENERATIVE_KINDS)} (a pretrained causal LM), not "
                    f"{self.model.kind!r}"
                )
            raise ValueError(
                f"model.kind {self.model.kind!r} writes text: it needs a generative task "
                f"({', '.join(t for t in task_names() if get_task(t).generative)}), not "
                f"{self.task!r}"
            )
        return self._formats_fit_the_task(generative)

    def _formats_fit_the_task(self, generative: bool) -> Config:
        """A generative task ships in the generative formats alone (a causal LM's decode loop
        lives in its engine), a scoring task in the others; an unset format is the first that
        fits."""
        valid = formats_for(generative)
        if "formats" not in self.export.model_fields_set:
            self.export.formats = [valid[0]]  # type: ignore[list-item]
        for target in self.targets.values():
            if "format" not in target.model_fields_set:
                target.format = valid[0]  # type: ignore[assignment]
        asked = [("export.formats", f) for f in self.export.formats]
        asked += [(f"targets.{n}.format", t.format) for n, t in self.targets.items()]
        for key, fmt in asked:
            if fmt == "tflite" and self.model.kind in NO_TFLITE_KINDS:
                raise ValueError(
                    f"{key}: model.kind {self.model.kind!r} does not convert to TFLite "
                    f"({NO_TFLITE_KINDS[self.model.kind]}); use onnx"
                )
            if fmt not in valid:
                what = "writes text" if generative else "scores texts"
                raise ValueError(
                    f"{key}: {fmt!r} does not carry a model that {what} (task {self.task!r}); "
                    f"valid: {', '.join(valid)}"
                )
        for name, target in self.targets.items():
            budgets = ["max_p99_ms"] if generative else ["min_tokens_per_s", "max_ttft_ms"]
            for key in (k for k in budgets if getattr(target, k) is not None):
                raise ValueError(
                    f"targets.{name}.{key}: a {target.format} target is not measured so "
                    "(generative formats: min_tokens_per_s, max_ttft_ms; the others: max_p99_ms)"
                )
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
        return MODEL_CONFIGS.get(str(kind)) if kind is not None else None
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
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {msg}{shown}")
    return "; ".join(lines)
