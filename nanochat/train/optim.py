"""The optimizers nanochat trains with: AdamW for the embedding and head, Muon for the block matrices.

`build_optimizers` splits a GPT's parameters the way nanochat does and records each group's base learning
rate as `initial_lr`; `apply_schedule` then sets every group's `lr` (and Muon's momentum) for a step, so
the training loop holds no optimizer arithmetic of its own. `optimizer_state` / `load_optimizer_state`
put both optimizers' state into one dict that `torch.load(weights_only=True)` reads back.

Muon knows nothing about distributed training: the trainer all-reduces gradients before `step()`, and
every rank then computes the same update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import AdamW, Optimizer

from nanochat.gpt import GPT

# Quintic Newton–Schulz coefficients (Keller Jordan's Muon): chosen to push every singular value
# towards 1 as fast as possible, at the price of landing in roughly [0.7, 1.2] rather than exactly on 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
REFERENCE_WIDTH = 768  # AdamW learning rates are tuned at n_embd 768 and scaled by (n_embd / 768) ** -0.5


def zeropower_via_newtonschulz5(G: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately orthogonalise a matrix: U·S·Vᵀ → U·S'·Vᵀ with S' near 1 (the polar factor of G).

    Computed in `dtype` (default bf16 on CUDA, fp32 elsewhere) and returned in it. Singular values far
    below G's Frobenius norm (about 1/500 of it for 5 steps) are not lifted all the way to 1.
    """
    if G.ndim != 2:
        raise ValueError(f"Newton–Schulz needs a 2D matrix, got shape {tuple(G.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = G.size(0) > G.size(1)
    if tall:  # iterate on the wide orientation so X @ Xᵀ is the smaller Gram matrix
        X = X.mT
    X = X / (X.norm() + 1e-7)  # every singular value ≤ 1, where the iteration converges
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2D weight matrices only.

    Per parameter: buf ← momentum·buf + (1 − momentum)·grad; the update direction is
    lerp(grad, buf, momentum) with Nesterov, else buf; it is orthogonalised and applied as
    p ← p − lr · max(1, rows/cols)^½ · NS(direction). Groups may carry their own `lr` and `momentum`.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
    ) -> None:
        if lr < 0:
            raise ValueError(f"Muon lr must be non-negative, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon ns_steps must be at least 1, got {ns_steps}")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if p.ndim != 2:
                raise ValueError(
                    f"Muon only optimises 2D matrices, got a parameter of shape {tuple(p.shape)}; "
                    "give vectors and scalars to AdamW"
                )
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                direction = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = zeropower_via_newtonschulz5(direction, steps=group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)
        return loss


def build_optimizers(
    model: GPT,
    *,
    unembedding_lr: float = 0.004,
    embedding_lr: float = 0.2,
    matrix_lr: float = 0.02,
    weight_decay: float = 0.0,
    adam_betas: tuple[float, float] = (0.8, 0.95),
) -> list[Optimizer]:
    """[AdamW(lm_head, wte), Muon(every matrix in transformer.h)], nanochat's recipe.

    The AdamW rates are scaled by (n_embd / 768) ** -0.5. Each group is named (`lm_head`, `wte`,
    `matrix`) and remembers its base rate as `initial_lr`, which `apply_schedule` multiplies.
    """
    prefixes = {"lm_head": "lm_head.", "wte": "transformer.wte.", "matrix": "transformer.h."}
    params: dict[str, list[torch.nn.Parameter]] = {name: [] for name in prefixes}
    unassigned = []
    for name, p in model.named_parameters():
        group = next((g for g, prefix in prefixes.items() if name.startswith(prefix)), None)
        if group is None:
            unassigned.append(name)
        else:
            params[group].append(p)
    if unassigned:  # named_parameters() lists each parameter once, so the rest is in exactly one group
        raise ValueError(f"parameters outside lm_head, transformer.wte and transformer.h: {unassigned}")

    width_scale = (model.config.n_embd / REFERENCE_WIDTH) ** -0.5
    adamw = AdamW(
        [
            {"params": params["lm_head"], "lr": unembedding_lr * width_scale, "name": "lm_head"},
            {"params": params["wte"], "lr": embedding_lr * width_scale, "name": "wte"},
        ],
        betas=adam_betas,
        eps=1e-10,
        weight_decay=weight_decay,
        fused=model.lm_head.weight.is_cuda,
    )
    muon = Muon([{"params": params["matrix"], "name": "matrix"}], lr=matrix_lr, momentum=0.95)
    optimizers: list[Optimizer] = [adamw, muon]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(
    step: int,
    num_iterations: int,
    warmup_ratio: float = 0.0,
    warmdown_ratio: float = 0.2,
    final_lr_frac: float = 0.0,
) -> float:
    """Linear warmup to 1, constant, then linear warmdown to `final_lr_frac` at step `num_iterations`.

    Ratios are fractions of `num_iterations`, rounded to whole steps; warmup step i gives (i + 1) / warmup.
    """
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be at least 1, got {num_iterations}")
    if not 0 <= step <= num_iterations:
        raise ValueError(f"step {step} is outside 0..num_iterations ({num_iterations})")
    for name, value in (
        ("warmup_ratio", warmup_ratio),
        ("warmdown_ratio", warmdown_ratio),
        ("final_lr_frac", final_lr_frac),
    ):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if warmup_ratio + warmdown_ratio > 1:
        raise ValueError(
            f"warmup_ratio + warmdown_ratio must be at most 1, got {warmup_ratio} + {warmdown_ratio}"
        )
    warmup_steps = round(warmup_ratio * num_iterations)
    warmdown_steps = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown_steps:
        return 1.0
    progress = (num_iterations - step) / warmdown_steps
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    """Muon's momentum, ramped linearly from `start` to `end` over the first `ramp_steps` steps."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if ramp_steps < 0:
        raise ValueError(f"ramp_steps must be non-negative, got {ramp_steps}")
    for name, value in (("start", start), ("end", end)):
        if not 0 <= value < 1:
            raise ValueError(f"momentum {name} must be in [0, 1), got {value}")
    frac = min(step / ramp_steps, 1.0) if ramp_steps else 1.0
    return (1 - frac) * start + frac * end


def apply_schedule(
    optimizers: Sequence[Optimizer],
    step: int,
    num_iterations: int,
    *,
    warmup_ratio: float = 0.0,
    warmdown_ratio: float = 0.2,
    final_lr_frac: float = 0.0,
    momentum_start: float = 0.85,
    momentum_end: float = 0.95,
    momentum_ramp_steps: int = 300,
) -> float:
    """Set every group's lr to initial_lr · lr_multiplier(step) and Muon's momentum for `step`;
    returns the multiplier (for the log)."""
    multiplier = lr_multiplier(step, num_iterations, warmup_ratio, warmdown_ratio, final_lr_frac)
    momentum = muon_momentum(step, momentum_start, momentum_end, momentum_ramp_steps)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if "initial_lr" not in group:
                raise ValueError(
                    f"a {type(optimizer).__name__} group has no initial_lr; build the optimizers with "
                    "build_optimizers or set group['initial_lr'] yourself"
                )
            group["lr"] = group["initial_lr"] * multiplier
            if isinstance(optimizer, Muon):
                group["momentum"] = momentum
    return multiplier


def optimizer_state(optimizers: Sequence[Optimizer]) -> dict:
    """Every optimizer's state_dict in one dict (tensors, numbers, strings, lists, tuples only), so a
    checkpoint can `torch.save` it and read it back with `torch.load(weights_only=True)`."""
    return {"optimizers": [{"type": type(o).__name__, "state": o.state_dict()} for o in optimizers]}


def load_optimizer_state(optimizers: Sequence[Optimizer], state: dict) -> None:
    """Restore what `optimizer_state` saved into optimizers built the same way (same types, same order)."""
    saved = state.get("optimizers")
    if not isinstance(saved, list):
        raise ValueError("not an optimizer state: expected a dict with an 'optimizers' list")
    saved_types = [entry["type"] for entry in saved]
    types = [type(o).__name__ for o in optimizers]
    if saved_types != types:
        raise ValueError(f"optimizer state holds {saved_types}, but the optimizers are {types}")
    for optimizer, entry in zip(optimizers, saved, strict=True):
        optimizer.load_state_dict(entry["state"])
