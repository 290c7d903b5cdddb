"""Day 27: a LoRA layer: equal to its base at start, only A and B train, the merge gives the same output."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure, close


def check(module: ModuleType) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    base = nn.Linear(12, 6)
    x = torch.randn(5, 12)
    want = base(x).detach()
    lora = module.LoRALinear(base, rank=2, alpha=4.0)
    given = "LoRALinear(nn.Linear(12, 6), rank=2, alpha=4.0), x of shape (5, 12)"
    trainable = sorted(n for n, p in lora.named_parameters() if p.requires_grad)
    if any(n.startswith("base.") for n in trainable):
        raise Failure(
            "the base layer still trains",
            given,
            "only A and B trainable",
            str(trainable),
            "base.weight.requires_grad_(False) (and its bias): LoRA freezes the pretrained weights",
        )
    count = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    if count != 2 * (12 + 6):
        raise Failure(
            "the low-rank factors have the wrong size",
            given,
            "36 trainable numbers: A (2, 12) and B (6, 2)",
            f"{count}",
            "A is (rank, in), B is (out, rank)",
        )
    got = lora(x).detach()
    if not close(got, want, 1e-6):
        raise Failure(
            "the wrapped layer does not start equal to the base",
            given,
            "base(x) exactly",
            f"max difference {float((got - want).abs().max()):.3g}",
            "initialize B with zeros (A random): B·A = 0 until training moves B",
        )
    with torch.no_grad():
        lora.A.copy_(torch.randn(lora.A.shape))
        lora.B.copy_(torch.randn(lora.B.shape))
    delta = (x @ lora.A.T @ lora.B.T).detach()
    got = lora(x).detach()
    if not close(got, want + 2.0 * delta, 1e-5):
        hint = "output = base(x) + (alpha / rank) · x Aᵀ Bᵀ"
        if close(got, want + 4.0 * delta, 1e-5):
            hint = "scale by alpha / rank (= 2 here), not alpha"
        elif close(got, want + delta, 1e-5):
            hint = "the update is scaled by alpha / rank"
        raise Failure(
            "the output with trained factors is wrong",
            given + ", A and B set at random",
            "base(x) + 2 · x Aᵀ Bᵀ",
            f"max difference {float((got - want - 2 * delta).abs().max()):.3g}",
            hint,
        )
    merged = lora.merged()
    if not isinstance(merged, nn.Linear) or not close(merged(x).detach(), got, 1e-5):
        raise Failure(
            "the merged layer differs from the LoRA layer",
            given,
            "the same outputs from one Linear",
            type(merged).__name__,
            "a copy of the base with weight W + (alpha / rank) · B @ A",
        )
    if merged.weight.data_ptr() == base.weight.data_ptr() or not close(lora.base.weight, base.weight):
        raise Failure(
            "merging changed the base layer in place",
            given,
            "the base untouched",
            "its weight modified",
            "copy.deepcopy(self.base) before adding B @ A",
        )


HINTS = (
    "Three parts: freeze the base and add A, B; add the scaled low-rank path; fold it into one weight.",
    "A = nn.Parameter(torch.randn(rank, in) * 0.01), B = nn.Parameter(torch.zeros(out, rank)); "
    "forward = base(x) + scale * x @ A.T @ B.T.",
    "for p in base.parameters(): p.requires_grad_(False). merged: layer = copy.deepcopy(base); "
    "layer.weight.data += scale * (B @ A).",
)
EXERCISE = Exercise(
    27,
    "lora",
    "LoRA by hand",
    "intermediate",
    HINTS,
    ("tracks/hf_finetune.py: finetune(method='lora'), merge_lora (tests/tracks/test_hf_finetune.py)",),
    check,
)
