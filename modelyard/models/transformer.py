"""A small pre-LN transformer encoder for classification.

Padding invariance: after moving real tokens to the front, positions are 0..length-1 whatever
the padding, every query attends only to real keys (a key-padding mask), and pooling reads only
real positions, so padding never reaches a real position's output.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelyard.config import TransformerConfig
from modelyard.models.heads import make_head
from modelyard.models.masking import masked_max, masked_mean, to_right_padding


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """Attend over (B, T, C) with a (B, 1, 1, T) boolean mask of keys that may be read."""
        batch, steps, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)  # 3 x (B, T, C)
        shape = (batch, steps, self.num_heads, dim // self.num_heads)
        q = q.view(shape).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(shape).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(shape).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(batch, steps, dim)  # (B, T, C)
        return self.proj(y)


class EncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + ffn(ln(x)) with a GELU feed-forward."""

    def __init__(self, dim: int, num_heads: int, ff_size: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.ln_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_size), nn.GELU(), nn.Linear(ff_size, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.dropout(self.attn(self.ln_attn(x), key_mask))
        return x + self.dropout(self.ff(self.ln_ff(x)))


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings -> pre-LN encoder -> pooling -> task head.

    Args:
        vocab_size: number of token ids.
        max_length: number of learned positions (the longest input).
        embedding_dim: model width (d_model).
        num_layers: encoder layers.
        num_heads: attention heads (divide ``embedding_dim``).
        ff_size: feed-forward hidden width.
        dropout: dropout on embeddings, attention weights and residual branches.
        pooling: ``mean`` / ``max`` over real tokens, or ``cls`` (the first token).
        head: the task head on the pooled features.
        pad_id: padding token id.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        max_length: int,
        embedding_dim: int,
        num_layers: int,
        num_heads: int,
        ff_size: int,
        dropout: float,
        pooling: Literal["mean", "cls", "max"],
        head: nn.Linear,
        pad_id: int,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.positions = nn.Embedding(max_length, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(embedding_dim, num_heads, ff_size, dropout) for _ in range(num_layers)
        )
        self.ln_final = nn.LayerNorm(embedding_dim)
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, num_outputs) for ids and mask of shape (B, T), padded on either side.

        T must not exceed ``max_length`` (the tokenizer truncates to it).
        """
        batch = to_right_padding(input_ids, attention_mask)
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.embedding(batch.ids) + self.positions(steps)[None]  # (B, T, C)
        x = self.dropout(x)
        key_mask = batch.valid[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_mask)
        x = self.ln_final(x)  # (B, T, C)
        if self.pooling == "cls":
            return self.head(x[:, 0])
        if self.pooling == "max":
            return self.head(masked_max(x, batch.valid))
        return self.head(masked_mean(x, batch.valid))


def build_transformer(
    cfg: TransformerConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> TransformerClassifier:
    """A :class:`TransformerClassifier` sized by ``cfg``.

    Args:
        cfg: the model section (kind ``transformer``).
        task: binary, multiclass, multilabel or regression.
        vocab_size: number of token ids.
        num_outputs: the label space's output count.
        max_length: longest input; the number of learned positions.
        pad_id: padding token id.

    Returns:
        The model, in training mode.
    """
    return TransformerClassifier(
        vocab_size=vocab_size,
        max_length=max_length,
        embedding_dim=cfg.embedding_dim,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        ff_size=cfg.ff_size,
        dropout=cfg.dropout,
        pooling=cfg.pooling,
        head=make_head(task, cfg.embedding_dim, num_outputs),
        pad_id=pad_id,
    )
