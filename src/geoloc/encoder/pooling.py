"""Pooling: from the backbone's last hidden states to one vector per input.

- `eos`: the hidden state of the last real (non-padding) token -- the paper's choice. The index
  is taken from the attention mask, so it is right whether the batch is padded left or right.
- `mean`: the average over real tokens only (padding masked out).
- `query`: learned query vectors attend to the hidden states through one cross-attention layer;
  the attended queries are averaged.
"""

from __future__ import annotations

import torch
from torch import nn

from geoloc.choices import Pooling, check_choice


def last_real_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row, for left or right padding."""
    length = attention_mask.shape[1]
    # Flip so the last real token becomes the first 1; argmax finds the first maximum.
    from_end = attention_mask.flip(dims=[1]).int().argmax(dim=1)
    return length - 1 - from_end


class EosPooling(nn.Module):
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        index = last_real_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class MeanPooling(nn.Module):
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class QueryPooling(nn.Module):
    """Learned queries through cross-attention over the (unpadded) hidden states."""

    def __init__(self, hidden_size: int, num_queries: int = 4, num_heads: int = 4):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"query pooling: hidden size {hidden_size} is not divisible by {num_heads} heads"
            )
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_size) * hidden_size**-0.5)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden.to(self.queries.dtype)
        queries = self.queries.unsqueeze(0).expand(hidden.shape[0], -1, -1)
        attended, _ = self.attention(queries, hidden, hidden, key_padding_mask=attention_mask == 0)
        return self.norm(attended).mean(dim=1)


def build_pooling(name: Pooling, hidden_size: int, num_queries: int = 4, num_heads: int = 4) -> nn.Module:
    if name == "eos":
        return EosPooling()
    if name == "mean":
        return MeanPooling()
    if name == "query":
        return QueryPooling(hidden_size, num_queries=num_queries, num_heads=num_heads)
    check_choice(name, Pooling, "pooling")
    raise AssertionError(f"pooling {name!r} has no module")
