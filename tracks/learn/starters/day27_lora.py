"""Day 27: LoRA by hand.

Write `LoRALinear(base, rank, alpha)`, an nn.Module wrapping a frozen nn.Linear: output =
base(x) + (alpha / rank) · x Aᵀ Bᵀ, with A (rank, in_features) small random and B (out_features, rank)
zeros, so the wrapped layer starts exactly equal to the base. Only A and B train. `merged()` returns a
plain nn.Linear whose weight is W + (alpha / rank) · B A.
"""

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        # TODO: freeze the base; create self.A (rank, in) random * 0.01 and self.B (out, rank) zeros
        raise NotImplementedError("the frozen base and the two low-rank factors")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO: base(x) plus the scaled low-rank update
        raise NotImplementedError("the forward pass")

    def merged(self) -> nn.Linear:
        # TODO: a copy of the base with W + scale * B @ A
        raise NotImplementedError("the merged layer")
