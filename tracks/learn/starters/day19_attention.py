"""Day 19: causal self-attention by hand.

Write `causal_attention(q, k, v)`: q has shape (batch, heads, time, head_dim); k and v may have fewer
heads (grouped-query attention: each key/value head serves heads // kv_heads consecutive query heads).
Scores are q·k / sqrt(head_dim); a position may look at itself and earlier positions only; softmax over
keys, weighted sum of values. Return (batch, heads, time, head_dim).
"""

import math

import torch


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    B, H, T, D = q.shape
    # TODO: repeat k and v to H heads (grouped-query attention)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    # TODO: hide the future with a boolean mask and masked_fill(-inf), then softmax and the values
    raise NotImplementedError("the causal mask, the softmax and the weighted sum of values")
