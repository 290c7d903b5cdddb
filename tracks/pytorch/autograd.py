"""Backpropagation by hand for a two-layer network, next to what torch.autograd computes.

The network is nanochat's MLP shape with a classifier on top:
    h = x W1 + b1,   a = relu(h)²,   z = a W2 + b2,   loss = mean cross-entropy(softmax(z), y)
`forward_backward` returns the loss and every gradient, derived with the chain rule one line per step;
`autograd_gradients` asks torch for the same; `numerical_gradient` checks either by central differences.
Use float64: the comparisons are then exact to ~1e-10.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Params = dict[str, torch.Tensor]


def init_params(n_in: int, n_hidden: int, n_out: int, seed: int = 0) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {
        "W1": torch.randn(n_in, n_hidden, generator=g, dtype=torch.float64) / n_in**0.5,
        "b1": torch.randn(n_hidden, generator=g, dtype=torch.float64) * 0.1,
        "W2": torch.randn(n_hidden, n_out, generator=g, dtype=torch.float64) / n_hidden**0.5,
        "b2": torch.zeros(n_out, dtype=torch.float64),
    }


def loss_only(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = x @ params["W1"] + params["b1"]
    a = torch.relu(h) ** 2
    z = a @ params["W2"] + params["b2"]
    return torch.nn.functional.cross_entropy(z, y)


def forward_backward(params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Params]:
    """Loss and gradients with respect to every parameter and to x, by the chain rule."""
    n = x.shape[0]
    h = x @ params["W1"] + params["b1"]  # (n, hidden)
    r = torch.relu(h)
    a = r**2
    z = a @ params["W2"] + params["b2"]  # (n, out)
    z_shift = z - z.max(dim=1, keepdim=True).values  # softmax is shift-invariant; this avoids overflow
    p = z_shift.exp() / z_shift.exp().sum(dim=1, keepdim=True)
    loss = -torch.log(p[torch.arange(n), y]).mean()

    dz = p.clone()
    dz[torch.arange(n), y] -= 1.0  # d(cross-entropy)/dz = softmax - one_hot
    dz /= n  # the mean over the batch
    grads = {"W2": a.T @ dz, "b2": dz.sum(dim=0)}
    da = dz @ params["W2"].T
    dh = da * 2 * r  # d(relu(h)²)/dh = 2 relu(h)   (0 where h < 0)
    grads["W1"] = x.T @ dh
    grads["b1"] = dh.sum(dim=0)
    grads["x"] = dh @ params["W1"].T
    return float(loss), grads


def autograd_gradients(params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Params]:
    """The same loss and gradients from torch.autograd."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    x = x.detach().clone().requires_grad_(True)
    loss = loss_only(leaves, x, y)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["x"] = x.grad
    return float(loss.detach()), grads


def numerical_gradient(
    f: Callable[[], torch.Tensor], tensor: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """d f / d tensor by central differences, one entry at a time (slow: for small checks only)."""
    grad = torch.zeros_like(tensor)
    flat, out = tensor.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f())
        flat[i] = old - eps
        minus = float(f())
        flat[i] = old
        out[i] = (plus - minus) / (2 * eps)
    return grad
