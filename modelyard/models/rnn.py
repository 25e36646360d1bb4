"""LSTM / GRU text models that give the same output for a text however the batch is padded.

``pack_padded_sequence`` would do this in eager torch but does not export to ONNX, so instead:
rows are right padded first (:func:`to_right_padding`); a forward-direction RNN's output at step
``t < length`` has then only seen real tokens. The backward direction runs a forward RNN over
each text reversed within its own length and reverses the outputs back, so it too starts at the
text's last real token. Layers are stacked one by one (one ``nn.LSTM`` per direction and layer)
because a stacked bidirectional ``nn.LSTM`` would feed padding into the upper layers.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from modelyard.config import RNNConfig
from modelyard.models.heads import make_head
from modelyard.models.masking import (
    RightPadded,
    gather_position,
    gather_time,
    masked_max,
    masked_mean,
    reverse_within_length,
    to_right_padding,
)

RNN_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNClassifier(nn.Module):
    """Embedding -> stacked (bi)directional LSTM/GRU -> pooling -> task head.

    Args:
        cell: ``lstm`` or ``gru``.
        vocab_size: number of token ids.
        embedding_dim: embedding width.
        hidden_size: RNN state width per direction.
        num_layers: stacked layers.
        bidirectional: add a backward direction to every layer.
        dropout: dropout between layers (as ``nn.LSTM(dropout=...)``).
        pooling: ``last`` (final state of each direction), ``mean`` or ``max`` over real steps.
        head: the task head on the pooled features.
        pad_id: padding token id (its embedding stays zero).
    """

    def __init__(
        self,
        *,
        cell: str,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        pooling: Literal["last", "mean", "max"],
        head: nn.Linear,
        pad_id: int,
    ) -> None:
        super().__init__()
        rnn = RNN_CELLS[cell]
        self.pooling = pooling
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        directions = 2 if bidirectional else 1
        sizes = [embedding_dim] + [hidden_size * directions] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(rnn(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_layers = (
            nn.ModuleList(rnn(n, hidden_size, batch_first=True) for n in sizes)
            if bidirectional
            else None
        )
        self.dropout = nn.Dropout(dropout)
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, num_outputs) for ids and mask of shape (B, T), padded on either side."""
        batch = to_right_padding(input_ids, attention_mask)
        x = self.embedding(batch.ids)  # (B, T, E)
        reverse = reverse_within_length(batch.lengths, x.shape[1])  # (B, T)
        for i, forward_rnn in enumerate(self.forward_layers):
            if i > 0:
                x = self.dropout(x)
            out, _ = forward_rnn(x)  # (B, T, H)
            if self.backward_layers is not None:
                back, _ = self.backward_layers[i](gather_time(x, reverse))  # (B, T, H) reversed
                out = torch.cat([out, gather_time(back, reverse)], dim=2)  # (B, T, 2H)
            x = out
        return self.head(self._pool(x, batch))

    def _pool(self, x: Tensor, batch: RightPadded) -> Tensor:
        if self.pooling == "mean":
            return masked_mean(x, batch.valid)
        if self.pooling == "max":
            return masked_max(x, batch.valid)
        last = gather_position(x, batch.lengths - 1)  # (B, D*H)
        if self.backward_layers is None:
            return last
        # the backward direction ends (has read the whole text) at step 0
        first = x[:, 0, self.hidden_size :]  # (B, H)
        return torch.cat([last[:, : self.hidden_size], first], dim=1)  # (B, 2H)


def build_rnn(
    cfg: RNNConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> RNNClassifier:
    """An :class:`RNNClassifier` sized by ``cfg`` (``max_length`` is not needed by RNNs).

    Args:
        cfg: the model section (kind ``lstm`` or ``gru``).
        task: binary, multiclass, multilabel or regression.
        vocab_size: number of token ids.
        num_outputs: the label space's output count.
        max_length: longest input (unused).
        pad_id: padding token id.

    Returns:
        The model, in training mode.
    """
    directions = 2 if cfg.bidirectional else 1
    return RNNClassifier(
        cell=cfg.kind,
        vocab_size=vocab_size,
        embedding_dim=cfg.embedding_dim,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        pooling=cfg.pooling,
        head=make_head(task, cfg.hidden_size * directions, num_outputs),
        pad_id=pad_id,
    )
