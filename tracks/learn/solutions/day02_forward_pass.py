"""Day 2: one forward pass by hand (reference: nanochat/gpt.py `GPT.forward`)."""

import torch

from nanochat.gpt import LOGIT_SOFTCAP, rms_norm


def forward_by_hand(model, idx: torch.Tensor) -> torch.Tensor:
    _, T = idx.shape
    cos, sin = model.cos[:, :T], model.sin[:, :T]
    x = rms_norm(model.transformer.wte(idx))  # (B, T, n_embd)
    for block in model.transformer.h:
        x = block(x, cos, sin)  # attention and MLP, each with a residual
    x = rms_norm(x)
    logits = model.lm_head(x)  # (B, T, vocab)
    return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
