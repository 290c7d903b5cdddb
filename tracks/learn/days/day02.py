"""Day 2: a forward pass through a tiny nanochat GPT, step by step, against GPT.forward."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure, close


def check(module: ModuleType) -> None:
    import torch

    from nanochat.gpt import GPT, LOGIT_SOFTCAP, GPTConfig, rms_norm

    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    for p in model.parameters():  # random everywhere (nanochat's init zeroes lm_head: all logits 0)
        torch.nn.init.normal_(p, std=0.5)
    model.eval()
    idx = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    given = "a GPT with n_layer 2, n_embd 32, vocab 64; idx of shape (2, 7)"
    with torch.no_grad():
        want = model(idx)
        got = module.forward_by_hand(model, idx)
        if tuple(got.shape) != tuple(want.shape):
            raise Failure(
                "the logits have the wrong shape",
                given,
                str(tuple(want.shape)),
                str(tuple(got.shape)),
                "(batch, time, vocab): lm_head on every position",
            )
        if close(got, want, 1e-5):
            return
        raw = model.lm_head(rms_norm(_blocks(model, idx)))
        hint = "compare each step with GPT.forward in nanochat/gpt.py"
        if close(got, raw, 1e-5):
            hint = "the logits are soft-capped: LOGIT_SOFTCAP * tanh(logits / LOGIT_SOFTCAP)"
        elif close(got, LOGIT_SOFTCAP * torch.tanh(model.lm_head(_blocks(model, idx)) / LOGIT_SOFTCAP), 1e-5):
            hint = "normalize once more (rms_norm) after the last block, before lm_head"
        elif close(got, _softcapped(model, _blocks(model, idx, first_norm=False)), 1e-5):
            hint = "the embeddings are RMS-normalized before the first block"
    raise Failure(
        "the logits differ from model(idx)",
        given,
        f"GPT.forward's (max |logit| {float(want.abs().max()):.3g})",
        f"max difference {float((got - want).abs().max()):.3g}",
        hint,
    )


def _blocks(model, idx, first_norm: bool = True):
    from nanochat.gpt import rms_norm

    T = idx.shape[1]
    x = model.transformer.wte(idx)
    x = rms_norm(x) if first_norm else x
    for block in model.transformer.h:
        x = block(x, model.cos[:, :T], model.sin[:, :T])
    return x


def _softcapped(model, x):
    import torch

    from nanochat.gpt import LOGIT_SOFTCAP, rms_norm

    return LOGIT_SOFTCAP * torch.tanh(model.lm_head(rms_norm(x)) / LOGIT_SOFTCAP)


HINTS = (
    "Open nanochat/gpt.py at GPT.forward: the lines after `x = rms_norm(self.transformer.wte(idx))`.",
    "x = rms_norm(wte(idx)); for block in model.transformer.h: x = block(x, cos, sin); then rms_norm(x).",
    "logits = model.lm_head(x); return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP).",
)
EXERCISE = Exercise(
    2,
    "forward_pass",
    "tracing a forward pass through the model",
    "beginner",
    HINTS,
    ("nanochat/gpt.py: GPT.forward (tests/nanochat/test_gpt.py)",),
    check,
)
