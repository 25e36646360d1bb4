"""A pretrained causal LM (GPT family) to fine-tune: LoRA (peft) or every weight.

The weights come from a local Hugging Face directory, a GGUF file or a package
(``models/causal_lm_source.py``), always offline (``local_files_only``) and as safetensors.
:class:`CausalLM` keeps modelyard's model contract, ``forward(input_ids, attention_mask)``, and
returns next-token logits (B, T, V); :func:`causal_lm_loss` is the shifted cross-entropy on the
labels ``modelyard.tokenize.chat.encode_conversations`` makes. Position ids are counted over the
real tokens, so padding on either side gives the same logits at the real positions.

After training, :meth:`CausalLM.merge_and_save` writes the merged Hugging Face directory (what
vLLM serves and the GGUF export reads) and :meth:`CausalLM.save_adapter` the LoRA adapter alone,
each written in a staging directory and renamed into place.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelyard.config import CausalLMConfig, LoRAConfig
from modelyard.errors import ConfigError
from modelyard.models.causal_lm_source import resolve_causal_lm
from modelyard.models.quiet import quiet_loggers, quiet_transformers
from modelyard.staging import publish_directory
from modelyard.tokenize.chat import IGNORE_INDEX

# what this family supports, for the stations that ask (training, export, serving)
CAPABILITIES = frozenset({"generate", "lora", "merge_and_save"})
ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head


class CausalLM(nn.Module):
    """A Hugging Face causal LM (optionally wrapped by peft) behind modelyard's model contract.

    Args:
        lm: a ``transformers`` causal LM, or a ``peft`` model wrapping one.
        tokenizer: its Hugging Face tokenizer (saved beside merged weights).
    """

    capabilities = CAPABILITIES

    def __init__(self, lm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.has_adapters = _is_peft(lm)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, select: Tensor | None = None
    ) -> Tensor:
        """Next-token logits for ids and mask (B, T), padded on either side.

        Args:
            select: (B, T) bool, the positions whose next token is learnt; only their logits
                are computed (the output head is a large share of a small model's step, and
                its (B, T, V) logits most of the step's memory).

        Returns:
            (B, T, V) logits, or (N, V) for the N selected positions in row-major order.
        """
        # positions count real tokens only, so left padding does not shift them
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        if select is None or self._decoder is None:
            logits = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=False,
            ).logits  # (B, T, V)
            return logits if select is None else logits[select]
        decoder, head = self._decoder
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        return head(hidden[select])  # (N, V)

    @property
    def _decoder(self) -> tuple[nn.Module, nn.Module] | None:
        """The decoder stack and the output head, when the head is a plain projection of the
        last hidden state (no logit scaling or soft-capping a config adds)."""
        base = self.base_model
        config = base.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            return None
        get_decoder = getattr(base, "get_decoder", None)
        head = base.get_output_embeddings()
        decoder = get_decoder() if get_decoder is not None else None
        if decoder is None or head is None:
            return None
        return decoder, head

    def trained_state_dict(self) -> dict[str, Tensor]:
        """The weights training changes, by their ``state_dict`` names: the adapters under LoRA,
        every (untied) weight under full fine-tuning. What a checkpoint holds."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def load_trained_state(self, tensors: dict[str, Tensor]) -> None:
        """Load what :meth:`trained_state_dict` saved; every trained weight must be there.

        Raises:
            ValueError: a weight is missing or unknown (another model or LoRA setting).
        """
        trained = set(self.trained_state_dict())
        missing, unknown = sorted(trained - set(tensors)), sorted(set(tensors) - trained)
        if missing or unknown:
            raise ValueError(
                f"the checkpoint does not fit the model: {len(missing)} trained weights "
                f"missing ({', '.join(missing[:3])}), {len(unknown)} unknown "
                f"({', '.join(unknown[:3])})"
            )
        self.load_state_dict(tensors, strict=False)

    @property
    def base_model(self) -> Any:
        """The transformers model underneath (adapters still in it when there are any)."""
        return self.lm.get_base_model() if self.has_adapters else self.lm  # type: ignore[operator]

    def merge_and_save(self, directory: str | Path) -> Path:
        """Write the fine-tuned model as a plain Hugging Face directory (safetensors,
        config.json, tokenizer), adapters merged into a copy of the weights.

        The model itself keeps its adapters and can train on. An existing ``directory`` is
        replaced whole once the new one is complete.

        Returns:
            The directory.
        """
        lm: Any = self.lm
        if self.has_adapters:
            # merge into a copy: this model stays trainable, adapters and all
            lm = copy.deepcopy(self.lm).merge_and_unload()  # type: ignore[operator]
        lm.config.use_cache = True  # training turned it off; generation wants it
        was_training = lm.training
        lm.eval()

        def write(staging: Path) -> None:
            lm.save_pretrained(str(staging), safe_serialization=True)
            self.tokenizer.save_pretrained(str(staging))
            add_legacy_rope_theta(staging / "config.json")

        try:
            return publish_directory(directory, write)
        finally:
            lm.train(was_training)

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter alone (adapter_config.json, adapter_model.safetensors) and
        the tokenizer, as peft's ``PeftModel.from_pretrained(base, directory)`` reads them.

        Raises:
            ConfigError: the model has no adapters (``model.lora: null``).
        """
        if not self.has_adapters:
            raise ConfigError("model.lora is null: there is no adapter to save; merge_and_save")

        def write(staging: Path) -> None:
            self.lm.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[operator]
            self.tokenizer.save_pretrained(str(staging))

        return publish_directory(directory, write)


class LoadedCausalLM(NamedTuple):
    """What :func:`load_causal_lm` returns."""

    model: CausalLM
    tokenizer: Any


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each token predicting the next one.

    Args:
        logits: (B, T, V) from :meth:`CausalLM.forward`.
        labels: (B, T) ids, :data:`IGNORE_INDEX` where no loss is taken (prompt, padding).

    Returns:
        A scalar: the mean over the learnt tokens (labels shifted left by one).
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B * (T - 1), V)
    targets = labels[:, 1:].reshape(-1)  # (B * (T - 1),)
    return F.cross_entropy(shifted.float(), targets, ignore_index=IGNORE_INDEX)


def load_causal_lm(cfg: CausalLMConfig) -> LoadedCausalLM:
    """Load the model and tokenizer ``cfg.path`` names, offline, ready to train.

    With ``cfg.lora`` the base weights are frozen and peft's LoRA adapters are added to
    ``cfg.lora.target_modules`` (``all-linear``: every linear layer but the output head); with
    ``lora: null`` every weight trains. ``gradient_checkpointing`` recomputes activations in the
    backward pass (non-reentrant, so frozen embeddings work) and turns the KV cache off.

    Returns:
        The :class:`CausalLM` (training mode) and its tokenizer (a pad token set: the
        end-of-sequence token when it had none).

    Raises:
        ConfigError: the path does not resolve (see ``resolve_causal_lm``), transformers or
            peft is missing, or no module matches the LoRA targets.
    """
    directory = resolve_causal_lm(cfg.path)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ConfigError(
            "model.kind 'causal_lm' needs transformers: pip install 'modelyard[train]'"
        ) from None
    with quiet_loggers(), quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            lm: Any = AutoModelForCausalLM.from_pretrained(
                str(directory),
                local_files_only=True,
                use_safetensors=True,
                attn_implementation=attention_kernel(cfg.attention),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"model.path: {cfg.path!r}: transformers cannot load {directory}: {exc}"
            ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked: any id will do
    if cfg.gradient_checkpointing:
        lm.activation_checkpointing_enable({"use_reentrant": False})
        lm.config.use_cache = False
    if cfg.lora is not None:
        lm = add_causal_lora(lm, cfg.lora)
    return LoadedCausalLM(CausalLM(lm, tokenizer).train(), tokenizer)


def attention_kernel(name: str) -> str:
    """``model.attention`` resolved: ``auto`` is ``eager`` without a GPU, ``sdpa`` with one."""
    if name != "auto":
        return name
    return "sdpa" if torch.cuda.is_available() else "eager"


def add_causal_lora(lm: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """``lm`` wrapped by peft with LoRA adapters; only the adapters train.

    Raises:
        ConfigError: peft is missing, or no module matches ``cfg.target_modules``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora needs peft: pip install 'modelyard[train]'") from None
    targets: str | list[str] = list(cfg.target_modules)
    if targets == [ALL_LINEAR]:
        targets = ALL_LINEAR  # peft reads the special name only as a plain string
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated alias while wrapping; nothing to act on
            warnings.filterwarnings(
                "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
            )
            return get_peft_model(lm, config)
    except ValueError as exc:  # peft's error for target modules the model does not have
        raise ConfigError(f"model.lora.target_modules: {exc}") from None


def build_causal_lm(
    cfg: CausalLMConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> CausalLM:
    """The model registry's builder for ``causal_lm`` (see ``models.registry.build_model``).

    ``task`` and ``num_outputs`` do not apply (the outputs are the vocabulary) and are ignored.

    Raises:
        ConfigError: as :func:`load_causal_lm`, or the tokenizer or the length does not fit
            the model.
    """
    del task, num_outputs, pad_id
    model = load_causal_lm(cfg).model
    config = model.base_model.config
    model_vocab = int(config.vocab_size)
    if vocab_size > model_vocab:
        raise ConfigError(
            f"model.path: the tokenizer has {vocab_size} ids but the model only {model_vocab}; "
            "use the model's own tokenizer (tokenizer.path = model.path)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > int(positions):
        raise ConfigError(
            f"tokenizer.max_length ({max_length}) is longer than the model's {positions} positions"
        )
    return model


def _is_peft(lm: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(lm, PeftModel)


def add_legacy_rope_theta(config_path: Path) -> None:
    """Repeat the RoPE base at the top of ``config.json`` as ``rope_theta``.

    transformers 5 writes it only inside ``rope_parameters``; readers built on transformers 4
    (older vLLM, KServe or llama.cpp converter images) look for ``rope_theta`` and, not finding
    it, silently fall back to 10000: wrong answers from a model that loads fine.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in config:
        config["rope_theta"] = theta
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
