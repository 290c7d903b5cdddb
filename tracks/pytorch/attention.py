"""Causal self-attention written out step by step, with the same weights as nanochat's attention.

nanochat's `CausalSelfAttention` calls `F.scaled_dot_product_attention` with `is_causal=True`; here every
step is explicit, in the same order:
1. project x to queries (n_head heads) and keys/values (n_kv_head heads, shared by groups of query heads);
2. rotate queries and keys by position (rotary embeddings), then RMS-normalize them (QK-norm);
3. scores = q·k / sqrt(head_dim); positions after the query get -inf (the causal mask);
4. softmax over keys, weighted sum of values, heads concatenated, output projection.
`tests/tracks/pytorch/test_attention.py` loads the weights of a `CausalSelfAttention` and checks the outputs
are the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanochat.gpt import CausalSelfAttention, apply_rotary, rms_norm


class MinimalAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_kv_head: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.q = nn.Linear(n_embd, n_head * self.head_dim, bias=False)
        self.k = nn.Linear(n_embd, n_kv_head * self.head_dim, bias=False)
        self.v = nn.Linear(n_embd, n_kv_head * self.head_dim, bias=False)
        self.out = nn.Linear(n_embd, n_embd, bias=False)

    @classmethod
    def from_nanochat(cls, attn: CausalSelfAttention) -> MinimalAttention:
        """A copy of nanochat attention's weights (c_q, c_k, c_v, c_proj) in this module."""
        n_embd = attn.c_q.weight.shape[1]
        module = cls(n_embd, attn.n_head, attn.n_kv_head)
        for mine, theirs in (
            (module.q, attn.c_q),
            (module.k, attn.c_k),
            (module.v, attn.c_v),
            (module.out, attn.c_proj),
        ):
            mine.weight.data.copy_(theirs.weight.data)
        return module

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, return_weights: bool = False):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # 2. position by rotation
        q, k = rms_norm(q), rms_norm(k)  # 2. QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        group = self.n_head // self.n_kv_head  # each key/value head serves `group` query heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # 3. (B, heads, T, T)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))  # 3. no looking ahead
        weights = torch.softmax(scores, dim=-1)  # 4. each row sums to 1 over the visible keys
        y = (weights @ v).transpose(1, 2).reshape(B, T, C)  # 4. heads side by side again
        out = self.out(y)
        return (out, weights) if return_weights else out
