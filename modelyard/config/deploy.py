"""The stations after training: ``compress:``, ``export:``, ``targets:`` and ``serve:``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from modelyard.config.base import StrictModel
from modelyard.errors import ConfigError

# The names of the options, each spelled once. The registries of the later stations are keyed by
# them (and tests check each registry's keys against its list): compress.QUANTIZERS by
# QUANTIZE_MODES; exporters.EXPORTERS, runtime.BACKENDS and compress.FORMAT_VARIANTS by
# EXPORT_FORMATS. The CLI's choices are read from here too, so it never imports torch to list them.
QuantizeMode = Literal["int8-dynamic", "int8-static", "fp16"]
QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)
ExportFormat = Literal["onnx", "tflite", "gguf"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
# the formats that carry a generative model (a causal LM with its own decode loop in the engine);
# the others carry models that score texts. A config pairs a generative task with these alone.
GENERATIVE_FORMATS: tuple[str, ...] = ("gguf",)
# GGUF's matrix types that the exporter writes (exporters.gguf.GGUF_TYPES is keyed by them); the
# first is `modelyard export --format gguf`'s default, the rest in order of size
GGUFType = Literal["f16", "q8_0", "q4_0", "f32"]
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)
# always built: the fp32 reference every variant is measured against, and the graphs compress
# prunes, clips and quantizes
REFERENCE_FORMAT: ExportFormat = "onnx"
# the modes each format's exporter applies itself (`modelyard export --quantize`, the pipeline's
# variants of that format); the reference format is quantized after export, by compress
EXPORT_QUANTIZE_MODES: dict[str, tuple[str, ...]] = {
    "onnx": (),
    "tflite": ("int8-dynamic",),
    "gguf": GGUF_TYPES,
}


def formats_for(generative: bool) -> tuple[str, ...]:
    """The export formats that carry a generative model, or those that carry a scoring one."""
    return tuple(f for f in EXPORT_FORMATS if (f in GENERATIVE_FORMATS) == generative)


def _default_gguf() -> list[GGUFType]:
    return ["f16", "q8_0", "q4_0"]


class CompressConfig(StrictModel):
    prune: float | None = Field(None, ge=0.0, lt=1.0)
    prune_kind: Literal["unstructured", "structured"] = "unstructured"
    finetune_epochs: int = Field(0, ge=0)
    quantize: list[QuantizeMode] = Field(default_factory=list)
    clip: float | None = Field(None, gt=0.0)
    max_accuracy_drop: float = Field(1.0, ge=0.0)  # points
    # generation: the GGUF variants `run` writes, and how much validation perplexity (through
    # the engine, % above the run's own in torch) a variant may add before it is rejected; its
    # test ROUGE-L may lose max_accuracy_drop points against the run's
    gguf: list[GGUFType] = Field(default_factory=_default_gguf, min_length=1)
    max_perplexity_rise: float = Field(10.0, ge=0.0)  # % of the run's validation perplexity

    @field_validator("quantize", mode="before")
    @classmethod
    def _one_mode(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


def _default_formats() -> list[ExportFormat]:
    return [REFERENCE_FORMAT]


class ExportConfig(StrictModel):
    formats: list[ExportFormat] = Field(default_factory=_default_formats)
    repo: str = "models"
    opset: int = Field(18, ge=17)
    parity_atol: float = Field(1e-4, gt=0.0)


class TargetConfig(StrictModel):
    # default: the reference format (a generation config's: its first generative format)
    format: ExportFormat = REFERENCE_FORMAT
    max_size_mb: float | None = Field(None, gt=0.0)
    max_p99_ms: float | None = Field(None, gt=0.0)
    # points of the primary metric; % of the reference for a lower-is-better one (perplexity)
    max_accuracy_drop: float | None = Field(None, ge=0.0)
    # generative formats: decode speed of one stream, and time to the first token of a prompt
    min_tokens_per_s: float | None = Field(None, gt=0.0)
    max_ttft_ms: float | None = Field(None, gt=0.0)


class ServeConfig(StrictModel):
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
    # Per connection (modelyard.serving.http): a request head over max_header_bytes is a 431; a
    # head not in within header_timeout_s, or a body not in within body_timeout_s of its head, a
    # 408; beyond max_connections open connections (per worker) a new one gets a 503 at once.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    header_timeout_s: float = Field(10.0, gt=0.0)
    body_timeout_s: float = Field(30.0, gt=0.0)
    max_connections: int = Field(512, ge=1)
    poll_s: float = Field(2.0, gt=0.0)  # how often the repository is checked for new versions
    # ONNX Runtime threads per model. 1 by default: each model's batcher feeds whole batches to
    # one session, and ORT's spinning pool would compete with the event loop for the cores.
    intra_op_threads: int = Field(1, ge=1)
    # ONNX Runtime execution provider: cpu; cuda (an error at start when this onnxruntime has
    # no CUDA, e.g. the CPU wheel: install onnxruntime-gpu); auto (CUDA when present, else CPU)
    providers: Literal["cpu", "cuda", "auto"] = "cpu"
    # what a request naming no version gets: this alias, else `default` (followed as it moves)
    alias: str | None = Field("server", pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
    # Ray Serve (`serve --ray`): this many replicas, autoscaled up to max_replicas when higher
    replicas: int = Field(1, ge=1)
    max_replicas: int | None = Field(None, ge=1)
    # generative bundles: requests decoded together per model (llama.cpp's slots), how many more
    # may wait for a slot (past that: 503 at once), each request's deadline, llama.cpp's threads
    # (unset: every core) and the context per request (unset: the bundle's)
    generation_slots: int = Field(4, ge=1)
    generation_max_waiting: int = Field(16, ge=0)
    generation_timeout_s: float = Field(300.0, gt=0.0)
    generation_threads: int | None = Field(None, ge=1)
    generation_context_length: int | None = Field(None, ge=16)
    generation_prompt_cache_mib: int = Field(256, ge=0)
    # the web page at / (models, try it, live figures) and the API description at /docs
    ui: bool = True

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServeConfig:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise PydanticCustomError(
                "replica_bounds",
                "max_replicas ({m}) is less than replicas ({n})",
                {"m": self.max_replicas, "n": self.replicas},
            )
        return self

    @classmethod
    def from_settings(cls, data: Mapping[str, Any], where: str = "serve") -> ServeConfig:
        """Validate settings from flags or ``key=value`` arguments (strings are converted).

        Raises:
            ConfigError: one line naming every bad setting.
        """
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            bad = [
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                for e in exc.errors()
            ]
            raise ConfigError(f"{where}: " + "; ".join(bad)) from None


# flags of `modelyard serve` / `python -m modelyard.serving` worth a word beyond their name
_FLAG_HELP = {
    "alias": "serve each model's version this alias names (default: server)",
    "providers": "ONNX Runtime execution provider: cpu (default), cuda, auto",
    "replicas": "with --ray: this many replicas (default 1)",
    "max_replicas": "with --ray: autoscale up to this many",
    "generation_slots": "generative models: requests decoded together per model (default 4)",
    "generation_max_waiting": "generative models: requests waiting for a slot before a 503",
    "generation_timeout_s": "generative models: each request's deadline (default 300)",
    "generation_threads": "generative models: llama.cpp's threads (default: every core)",
    "generation_context_length": "generative models: context per request (default: the bundle's)",
    "generation_prompt_cache_mib": "generative models: host memory for shared prompt prefixes "
    "(default 256; 0: none)",
    "ui": "the web page at / and the API docs at /docs (default: on)",
}


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Every :class:`ServeConfig` field as a flag (``max_queue`` -> ``--max-queue``), default
    unset, so a flag overrides the config only when given (see :func:`serve_overrides`)."""
    for name, info in ServeConfig.model_fields.items():
        default = info.default
        if isinstance(default, bool):  # --ui / --no-ui
            parser.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_FLAG_HELP.get(name),
            )
            continue
        # numbers as such; the rest as strings, which pydantic converts and checks
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        kind = type(default) if numeric else str
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, help=_FLAG_HELP.get(name)
        )


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ServeConfig` fields given as flags (see :func:`add_serve_flags`)."""
    return {k: v for k in ServeConfig.model_fields if (v := getattr(args, k, None)) is not None}
