"""A Kim-style CNN: parallel 1-D convolutions of several widths, max-pooled over time.

Padding invariance: padding embeddings are zeroed, which is exactly what a convolution's own
zero padding supplies, and ``padding=k-1`` creates every window that touches at least one real
token (``length + k - 1`` of them). Windows past those are masked out before the max, so the
pooled features depend only on the text, not on how much padding follows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelyard.config import CNNConfig
from modelyard.models.heads import make_head
from modelyard.models.masking import to_right_padding


class CNNClassifier(nn.Module):
    """Embedding -> Conv1d per kernel size -> ReLU -> masked max over time -> dropout -> head.

    Args:
        vocab_size: number of token ids.
        embedding_dim: embedding width.
        num_filters: output channels per kernel size.
        kernel_sizes: convolution widths.
        dropout: dropout on the concatenated pooled features.
        head: the task head on the pooled features.
        pad_id: padding token id.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int,
        num_filters: int,
        kernel_sizes: list[int],
        dropout: float,
        head: nn.Linear,
        pad_id: int,
    ) -> None:
        super().__init__()
        self.kernel_sizes = list(kernel_sizes)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(
            nn.Conv1d(embedding_dim, num_filters, k, padding=k - 1) for k in self.kernel_sizes
        )
        self.dropout = nn.Dropout(dropout)
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, num_outputs) for ids and mask of shape (B, T), padded on either side."""
        batch = to_right_padding(input_ids, attention_mask)
        x = self.embedding(batch.ids) * batch.valid[:, :, None]  # (B, T, E)
        x = x.transpose(1, 2)  # (B, E, T)
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs, strict=True):
            h = F.relu(conv(x))  # (B, F, T + k - 1)
            steps = torch.arange(h.shape[2], device=h.device)  # (T + k - 1,)
            windows = steps[None, :] < (batch.lengths + (k - 1))[:, None]  # (B, T + k - 1)
            h = h.masked_fill(~windows[:, None, :], float("-inf"))
            pooled.append(h.amax(dim=2))  # (B, F)
        features = torch.cat(pooled, dim=1)  # (B, F * len(kernel_sizes))
        return self.head(self.dropout(features))


def build_cnn(
    cfg: CNNConfig,
    *,
    task: str,
    vocab_size: int,
    num_outputs: int,
    max_length: int,
    pad_id: int = 0,
) -> CNNClassifier:
    """A :class:`CNNClassifier` sized by ``cfg`` (``max_length`` is not needed by the CNN).

    Args:
        cfg: the model section (kind ``cnn``).
        task: binary, multiclass, multilabel or regression.
        vocab_size: number of token ids.
        num_outputs: the label space's output count.
        max_length: longest input (unused).
        pad_id: padding token id.

    Returns:
        The model, in training mode.
    """
    return CNNClassifier(
        vocab_size=vocab_size,
        embedding_dim=cfg.embedding_dim,
        num_filters=cfg.num_filters,
        kernel_sizes=cfg.kernel_sizes,
        dropout=cfg.dropout,
        head=make_head(task, cfg.num_filters * len(cfg.kernel_sizes), num_outputs),
        pad_id=pad_id,
    )
