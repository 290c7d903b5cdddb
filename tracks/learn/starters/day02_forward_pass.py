"""Day 2: trace one forward pass through nanochat's GPT.

Write `forward_by_hand(model, idx)`: the logits of `nanochat.gpt.GPT.forward` for token ids idx of shape
(batch, time), one step at a time: embed and RMS-normalize, run every block with the rotary tables cut to
the sequence length, normalize again, project to the vocabulary, and soft-cap the logits
(LOGIT_SOFTCAP · tanh(logits / LOGIT_SOFTCAP)). Return (batch, time, vocab). Read nanochat/gpt.py.
"""

import torch

from nanochat.gpt import LOGIT_SOFTCAP, rms_norm


def forward_by_hand(model, idx: torch.Tensor) -> torch.Tensor:
    B, T = idx.shape
    cos, sin = model.cos[:, :T], model.sin[:, :T]
    x = model.transformer.wte(idx)  # (B, T, n_embd)
    # TODO: normalize, run model.transformer.h (each block takes x, cos, sin), normalize, lm_head, soft-cap
    raise NotImplementedError("the blocks, the final norm, lm_head and the soft cap")
