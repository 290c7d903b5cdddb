"""Day 19: causal attention, checked against torch's scaled_dot_product_attention and for leaks."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure, close


def check(module: ModuleType) -> None:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64) for _ in range(3))
    given = "q, k, v of shape (2, 2, 6, 8)"
    out = module.causal_attention(q, k, v)
    if tuple(out.shape) != (2, 2, 6, 8):
        raise Failure(
            "the output has the wrong shape",
            given,
            "(2, 2, 6, 8)",
            str(tuple(out.shape)),
            "softmax(scores) of (B, H, T, T) times v of (B, H, T, D)",
        )
    if torch.isnan(out).any():
        rows = sorted({int(t) for t in torch.nonzero(torch.isnan(out))[:, 2]})
        raise Failure(
            "NaN in the output: some position sees no key at all",
            given,
            "finite values",
            f"NaN at positions {rows}",
            "a position may attend to itself: triu(..., diagonal=1)",
        )
    v2 = v.clone()
    v2[:, :, 4] += 10.0  # change the value at position 4: positions 0..3 must not notice
    changed = (module.causal_attention(q, k, v2) - out).abs().amax(dim=(0, 1, 3))
    leaks = [t for t in range(4) if changed[t] > 1e-9]
    if leaks:
        raise Failure(
            "the mask leaks the future",
            given + "; then v at position 4 changed",
            "outputs at positions 0..3 unchanged",
            f"positions {leaks} changed",
            "mask every key after the query: torch.triu(ones(T, T), diagonal=1) → -inf",
        )
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if not close(out, want, 1e-9):
        hint = "softmax over the last dimension (keys), then multiply by v"
        if close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0), 1e-9):
            hint = "divide the scores by sqrt(head_dim)"
        raise Failure(
            "the values differ from scaled_dot_product_attention(is_causal=True)",
            given,
            "the same output",
            f"max difference {float((out - want).abs().max()):.3g}",
            hint,
        )
    q4 = torch.randn(2, 4, 6, 8, generator=g, dtype=torch.float64)
    k2 = torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64)
    v2 = torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64)
    given = "q of shape (2, 4, 6, 8), k and v of shape (2, 2, 6, 8)"
    try:
        out = module.causal_attention(q4, k2, v2)
    except RuntimeError as e:
        raise Failure(
            "grouped-query attention fails",
            given,
            "(2, 4, 6, 8)",
            f"RuntimeError: {e}"[:200],
            "repeat each key/value head heads // kv_heads times: repeat_interleave(group, dim=1)",
        ) from None
    want = F.scaled_dot_product_attention(
        q4, k2.repeat_interleave(2, dim=1), v2.repeat_interleave(2, dim=1), is_causal=True
    )
    if not close(out, want, 1e-9):
        raise Failure(
            "query heads use the wrong key/value heads",
            given,
            "query heads 0 and 1 share key head 0, heads 2 and 3 key head 1",
            "a different pairing",
            "repeat_interleave (0,0,1,1), not repeat (0,1,0,1)",
        )


HINTS = (
    "Four steps: repeat k/v heads, scores scaled by sqrt(D), mask the future with -inf, softmax then @ v.",
    "The mask is True above the diagonal: torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1).",
    "group = H // k.shape[1]; k = k.repeat_interleave(group, dim=1) (same for v); "
    "scores.masked_fill(future, float('-inf')).softmax(-1) @ v.",
)
EXERCISE = Exercise(
    19,
    "attention",
    "minimal causal attention",
    "intermediate",
    HINTS,
    ("tracks/pytorch/attention.py: MinimalAttention (tests/tracks/pytorch/test_attention.py)",),
    check,
)
