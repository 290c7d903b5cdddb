"""Day 16: backpropagation by hand (reference: tracks/pytorch/autograd.py `forward_backward`)."""

import torch


def forward_backward(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    n = x.shape[0]
    h = x @ params["W1"] + params["b1"]
    r = torch.relu(h)
    a = r**2
    z = a @ params["W2"] + params["b2"]
    p = torch.softmax(z, dim=1)
    loss = -torch.log(p[torch.arange(n), y]).mean()
    dz = p.clone()
    dz[torch.arange(n), y] -= 1.0  # softmax minus one-hot
    dz /= n  # the loss is a mean over the batch
    grads = {"W2": a.T @ dz, "b2": dz.sum(dim=0)}
    da = dz @ params["W2"].T
    dh = da * 2 * r  # d relu(h)² / dh = 2 relu(h)
    grads["W1"] = x.T @ dh
    grads["b1"] = dh.sum(dim=0)
    grads["x"] = dh @ params["W1"].T
    return float(loss), grads
