"""``model:``: one section per model family, told apart by ``kind``."""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import Field, field_validator, model_validator

from modelyard.config.base import StrictModel

# How a model's weights start (``modelyard.models.initialization``): ``keras`` is what the seed
# recipe's Keras layers do (embeddings U(-0.05, 0.05), Glorot-uniform kernels, orthogonal
# recurrent kernels, zero biases, LSTM forget-gate bias 1); ``torch`` keeps PyTorch's per-layer
# defaults (embeddings N(0, 1)). Measured in docs/benchmarks.md ("Initialisation").
Init = Literal["keras", "torch"]


class RNNConfig(StrictModel):
    kind: Literal["lstm", "gru"]
    init: Init = "keras"
    embedding_dim: int = Field(128, ge=1)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1, le=8)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pooling: Literal["last", "mean", "max"] = "last"


class CNNConfig(StrictModel):
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


class TransformerConfig(StrictModel):
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


class LoRAConfig(StrictModel):
    """LoRA adapters (``peft``) on the encoder, base weights frozen; merged before export."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)


class PretrainedModelConfig(StrictModel):
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
    # the encoder frozen whole; its pooled outputs are computed once per text and the head alone
    # trains on them: the cheapest useful model (an epoch costs almost nothing)
    head_only: bool = False


class CausalLMLoRAConfig(LoRAConfig):
    """LoRA on a causal LM: r 16, alpha 32 on every linear layer but the output head (peft's
    ``all-linear``), QLoRA's recipe, without dropout (peft's default): on a CPU, dropout 0.05
    made a SmolLM2 step 1.33-1.53x slower (``bench/generation_step.py``: a mask per adapted
    layer, 210 of them), and a run of one to three epochs does not overfit enough to need it."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1)


class CausalLMConfig(StrictModel):
    """A pretrained causal LM (GPT family, ``models/causal_lm.py``) to fine-tune on chat,
    prompt/completion or plain-text records.

    ``path``: a local Hugging Face directory (config.json, safetensors, tokenizer.json), a
    ``.gguf`` file (dequantized once into a local cache), or ``package:NAME`` (an installed
    distribution that ships one ``.gguf``, or a module's ``get_model_path()``); resolved when
    the model is loaded. ``lora: null`` fine-tunes every weight.
    """

    kind: Literal["causal_lm"]
    path: str = Field(min_length=1)
    lora: LoRAConfig | None = Field(default_factory=CausalLMLoRAConfig)
    gradient_checkpointing: bool = False
    # how attention is computed: ``auto`` is ``eager`` on a CPU (its plain matmuls made a
    # SmolLM2 LoRA step of ~840 tokens 1.05-1.29x faster than torch's SDPA kernel, whose CPU
    # backward is slow at these lengths; bench/generation_step.py) and ``sdpa`` on a GPU
    attention: Literal["auto", "eager", "sdpa"] = "auto"

    @field_validator("lora", mode="before")
    @classmethod
    def _causal_lora_defaults(cls, v: object) -> object:
        # a partial ``lora:`` section fills its gaps with the causal LM's defaults, not the
        # encoder's (query/value modules a llama does not have)
        return CausalLMLoRAConfig.model_validate(v) if isinstance(v, dict) else v


class BagOfNgramsConfig(StrictModel):
    """fastText-style bag of words and hashed word n-grams (``models/bag_of_ngrams.py``)."""

    kind: Literal["bag_of_ngrams"]
    init: Init = "keras"
    embedding_dim: int = Field(64, ge=1)
    ngrams: int = Field(2, ge=1, le=3)  # longest word n-gram: 1 = words only, 2 = + bigrams
    buckets: int = Field(2**16, ge=1, le=2**22)  # hashed n-gram embeddings (shared by all n)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the averaged vector


class LinearNgramsConfig(StrictModel):
    """A linear model on hashed word and character n-grams (``models/linear_ngrams.py``), read
    from the ``char`` tokenizer's ids."""

    kind: Literal["linear_ngrams"]
    init: Init = "keras"
    char_ngrams: list[int] = Field(default_factory=lambda: [2, 5], min_length=2, max_length=2)
    word_ngrams: int = Field(2, ge=0, le=2)  # 0: characters only, 1: + words, 2: + word bigrams
    word_window: int = Field(24, ge=1, le=64)  # the most characters a word or bigram hash reads
    buckets: int = Field(2**20, ge=1, le=2**22)  # hashed rows, shared by every feature kind
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # each feature dropped with this probability

    @field_validator("char_ngrams")
    @classmethod
    def _orders(cls, v: list[int]) -> list[int]:
        if not 1 <= v[0] <= v[1] <= 8:
            raise ValueError(
                f"char_ngrams is [shortest, longest] with 1 <= shortest <= longest <= 8, got {v}"
            )
        return v


ModelConfig = Annotated[
    Union[
        RNNConfig,
        CNNConfig,
        TransformerConfig,
        BagOfNgramsConfig,
        LinearNgramsConfig,
        PretrainedModelConfig,
        CausalLMConfig,
    ],
    Field(discriminator="kind"),
]
# kind -> its section, read from the union above and each family's ``kind`` literal: adding a
# family is one class and one union member (and its builder in models.MODEL_BUILDERS)
MODEL_CONFIGS: dict[str, type[StrictModel]] = {
    kind: family
    for family in get_args(get_args(ModelConfig)[0])
    for kind in get_args(family.model_fields["kind"].annotation)
}
MODEL_KINDS: tuple[str, ...] = tuple(MODEL_CONFIGS)
# kinds that read only their own model's vocabulary: tokenizer.kind is ``pretrained`` and
# tokenizer.path defaults to model.path
OWN_TOKENIZER_KINDS: tuple[str, ...] = ("pretrained", "causal_lm")
# kinds that read characters: tokenizer.kind must be ``char`` (and is, when the section is unset)
CHAR_TOKENIZER_KINDS: tuple[str, ...] = ("linear_ngrams",)
# kinds LiteRT cannot run (linear_ngrams' term weights need a sort, which LiteRT has no kernel
# for: measured with litert-torch 0.10.0), mapped to why
NO_TFLITE_KINDS: dict[str, str] = {
    "linear_ngrams": "its term weights need a sort, and LiteRT has no kernel for one",
}
# the kinds that write text (a generative task's model), not scores
GENERATIVE_KINDS: tuple[str, ...] = ("causal_lm",)
