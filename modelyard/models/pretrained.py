"""A pretrained transformer encoder (BERT family) from a local directory, with a task head on it.

The encoder is ``transformers.AutoModel.from_pretrained(DIR, local_files_only=True,
use_safetensors=True)``: never a hub call, never a pickle. Padding invariance works as in
``transformer.py``: real tokens are moved to the front first, so position ids are 0..length-1
whatever the padding, the attention mask hides every pad key, and pooling reads real positions
only. Token type ids are zeros made here (single-text classification), so the graph keeps the
two inputs every model has.

For fine-tuning recipes the classifier says which layer each parameter belongs to
(:meth:`PretrainedClassifier.layer_of`: embeddings 0, encoder layer i is i + 1, the head on
top), which layer-wise learning-rate decay (``training/param_groups.py``) reads. With
``model.lora`` the encoder gets low-rank adapters (``peft``) and only they and the head train;
:meth:`PretrainedClassifier.merge_adapters` folds them into the weights before export.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from modelyard.config import LoRAConfig, PretrainedModelConfig
from modelyard.errors import ConfigError
from modelyard.models.capabilities import Capabilities
from modelyard.models.heads import make_head
from modelyard.models.masking import masked_mean, to_right_padding
from modelyard.models.quiet import quiet_loggers, quiet_transformers
from modelyard.tokenize.pretrained import resolve_model_dir


class PretrainedClassifier(nn.Module):
    """Pretrained encoder -> pooling (``cls`` or ``mean``) -> dropout -> task head.

    Args:
        encoder: a ``transformers`` base model (no task head) whose output has
            ``last_hidden_state`` (B, T, C).
        pooling: ``cls`` (the first token, BERT's [CLS]) or ``mean`` over real tokens.
        dropout: dropout on the pooled features.
        head: the task head on the pooled features.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        pooling: Literal["cls", "mean"],
        dropout: float,
        head: nn.Linear,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = head
        # BERT and RoBERTa take token types (zeros here); DistilBERT has none
        self.token_types = int(getattr(encoder.config, "type_vocab_size", 0) or 0) > 0
        self.layer_prefixes = _layer_prefixes(encoder, "encoder.")
        self.num_layers = len(self.layer_prefixes) - 1  # entry 0 is the embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, num_outputs) for ids and mask of shape (B, T), padded on either side."""
        return self.classify(self.features(input_ids, attention_mask))

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The pooled encoder outputs (B, C): what the head sees (``head_only`` computes them
        once)."""
        batch = to_right_padding(input_ids, attention_mask)
        inputs = {"input_ids": batch.ids, "attention_mask": batch.valid.to(torch.long)}
        if self.token_types:
            inputs["token_type_ids"] = torch.zeros_like(batch.ids)
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, C)
        # cls: the first token, BERT's [CLS] (real tokens start at 0 after the rotation)
        cls = self.pooling == "cls"
        return hidden[:, 0] if cls else masked_mean(hidden, batch.valid)  # (B, C)

    def classify(self, features: Tensor) -> Tensor:
        """Logits (B, num_outputs) from pooled features (B, C)."""
        return self.head(self.dropout(features))

    def merge_adapters(self) -> PretrainedClassifier:
        """Fold LoRA adapters into the weights they adapt and drop them (no-op without LoRA).

        The outputs stay the same; the modules become the encoder's own ``nn.Linear`` again,
        so the exported graph is the plain encoder's.
        """
        for name, layer in _tuner_layers(self.encoder):
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(self.encoder.get_submodule(parent), child, layer.get_base_layer())
        return self

    def layer_of(self, name: str) -> int:
        """The layer a parameter belongs to: 0 embeddings, i + 1 encoder layer i, else the top.

        Args:
            name: the parameter's name in ``self.named_parameters()``.

        Returns:
            An index in ``0 .. num_layers + 1``; the head (and anything past the last encoder
            layer) is ``num_layers + 1``.
        """
        for index, prefix in enumerate(self.layer_prefixes):
            if name.startswith(prefix):
                return index
        return self.num_layers + 1


def build_pretrained(
    cfg: PretrainedModelConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> PretrainedClassifier:
    """A :class:`PretrainedClassifier` on the encoder in ``cfg.path``.

    Args:
        cfg: the model section (kind ``pretrained``).
        task: binary, multiclass, multilabel or regression.
        vocab_size: the tokenizer's vocabulary size (at most the encoder's).
        num_outputs: the label space's output count.
        max_length: longest input in tokens (at most the encoder's positions).
        pad_id: padding token id (padding is masked; the id itself does not matter).

    Returns:
        The model, in training mode, with the configured parts frozen.

    Raises:
        ConfigError: the directory is missing, holds only pickled weights, cannot be loaded,
            or does not fit the tokenizer, the length or the freezing settings.
    """
    encoder = load_encoder(cfg.path)
    config = encoder.config
    model_vocab = int(getattr(config, "vocab_size", vocab_size))
    if vocab_size > model_vocab:
        raise ConfigError(
            f"model.path: the tokenizer has {vocab_size} ids but the encoder only "
            f"{model_vocab}; use the model's own tokenizer (tokenizer.path = model.path)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > int(positions):
        raise ConfigError(
            f"tokenizer.max_length ({max_length}) is longer than the encoder's "
            f"{positions} positions"
        )
    hidden = int(getattr(config, "hidden_size", 0))
    if hidden < 1:
        raise ConfigError(f"model.path: {cfg.path}: config.json has no hidden_size")
    model = PretrainedClassifier(
        encoder=encoder,
        pooling=cfg.pooling,
        dropout=cfg.dropout,
        head=make_head(task, hidden, num_outputs),
    )
    if cfg.lora is not None:
        add_lora(encoder, cfg.lora)
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen embeddings (inputs without grad) and keeps RNG state
        encoder.activation_checkpointing_enable({"use_reentrant": False})
    freeze(model, embeddings=cfg.freeze_embeddings, layers=cfg.freeze_layers)
    if cfg.head_only:
        if cfg.lora is not None:
            raise ConfigError("model.head_only trains the head alone: drop model.lora")
        encoder.requires_grad_(False)
    return model


def pretrained_capabilities(cfg: PretrainedModelConfig) -> Capabilities:
    """``head_only`` trains the head alone on features computed once; LoRA adapters merge."""
    return Capabilities(head_only=cfg.head_only, merges_adapters=cfg.lora is not None)


def freeze(model: PretrainedClassifier, *, embeddings: bool, layers: int) -> None:
    """Stop training the embeddings and/or the first ``layers`` encoder layers.

    Raises:
        ConfigError: ``layers`` is more than the encoder has.
    """
    if layers > model.num_layers:
        raise ConfigError(
            f"model.freeze_layers ({layers}) is more than the encoder's {model.num_layers} layers"
        )
    frozen = (
        model.layer_prefixes[: layers + 1] if embeddings else model.layer_prefixes[1 : layers + 1]
    )
    for name, param in model.named_parameters():
        if any(name.startswith(prefix) for prefix in frozen):
            param.requires_grad_(False)


def load_encoder(path: str) -> Any:
    """The ``transformers`` base model in ``path`` (a directory or ``package:NAME``), offline.

    Returns:
        A ``transformers.PreTrainedModel`` in training mode, without its pooler (modelyard pools).

    Raises:
        ConfigError: transformers is missing, the directory has no config.json or only pickled
            (``.bin``) weights, or transformers cannot load it.
    """
    directory = resolve_model_dir(path)
    if not (directory / "config.json").is_file():
        raise ConfigError(f"model.path: {path!r}: no config.json in {directory}")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise ConfigError(
            f"model.path: {path!r}: {directory} has {found}; modelyard loads safetensors only "
            "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    try:
        from transformers import AutoModel
    except ImportError:
        raise ConfigError(
            "model.kind 'pretrained' needs transformers: pip install 'modelyard[train]'"
        ) from None
    with quiet_loggers(), quiet_transformers():
        try:
            encoder = AutoModel.from_pretrained(
                str(directory), local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model.path: {path!r}: transformers cannot load it: {exc}") from None
    # BERT's pooler (dense + tanh on [CLS]) is replaced by modelyard's pooling and head; left in,
    # its weights would sit in the optimizer without ever getting a gradient
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder.train()


def add_lora(encoder: nn.Module, cfg: LoRAConfig) -> None:
    """Inject LoRA adapters into ``encoder`` in place; only the adapters stay trainable.

    Raises:
        ConfigError: peft is missing, or no module matches ``cfg.target_modules``.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("model.lora needs peft: pip install 'modelyard[train]'") from None
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
    )
    try:
        inject_adapter_in_model(config, encoder)
    except ValueError as exc:  # peft's error for target modules the model does not have
        raise ConfigError(f"model.lora.target_modules: {exc}") from None


def _tuner_layers(module: nn.Module) -> list[tuple[str, Any]]:
    if not any("lora_" in name for name, _ in module.named_parameters()):
        return []  # no adapters: do not import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def _layer_prefixes(encoder: nn.Module, root: str) -> list[str]:
    """Parameter-name prefixes of the embeddings, then of each encoder layer, bottom up.

    The layers are the first ``nn.ModuleList`` as long as ``config.num_hidden_layers`` (BERT's
    ``encoder.layer``, DistilBERT's ``transformer.layer``); the embeddings are the
    ``embeddings`` module, or the input embedding table when there is none.
    """
    count = int(getattr(encoder.config, "num_hidden_layers", 0))
    names = {module: name for name, module in encoder.named_modules()}
    embeddings = getattr(encoder, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        embeddings = encoder.get_input_embeddings()  # type: ignore[operator]
    prefixes = [root + names[embeddings] + "."]
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and count > 0:
            prefixes += [f"{root}{name}.{i}." for i in range(count)]
            break
    return prefixes
