"""Exercise: causal attention written out equals nanochat's CausalSelfAttention, and is causal."""

from __future__ import annotations

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from tracks.pytorch.attention import MinimalAttention


@pytest.mark.parametrize(("n_head", "n_kv_head"), [(4, 4), (4, 2), (4, 1)])
def test_matches_nanochats_attention(n_head, n_kv_head):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(sequence_len=32, vocab_size=64, n_layer=1, n_head=n_head, n_kv_head=n_kv_head, n_embd=64)
    )
    attn = model.transformer.h[0].attn
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    mine = MinimalAttention.from_nanochat(attn)
    x = torch.randn(3, 20, 64)
    cos, sin = model.cos[:, :20], model.sin[:, :20]
    torch.testing.assert_close(mine(x, cos, sin), attn(x, cos, sin), rtol=1e-4, atol=1e-5)


def test_no_position_sees_the_future():
    torch.manual_seed(1)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    mine = MinimalAttention(32, 2, 2)
    x = torch.randn(1, 12, 32)
    changed = x.clone()
    changed[:, 7:] = torch.randn(1, 5, 32)  # rewrite the future after position 6
    cos, sin = model.cos[:, :12], model.sin[:, :12]
    out, weights = mine(x, cos, sin, return_weights=True)
    torch.testing.assert_close(mine(changed, cos, sin)[:, :7], out[:, :7])
    assert torch.all(weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
