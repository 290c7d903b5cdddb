"""Day 17: one epoch of a training loop (reference: tracks/pytorch/mlp.py `train`)."""

import torch
from torch import nn


def train_epoch(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator):
    model.train()
    total = 0.0
    for batch in torch.randperm(len(x), generator=generator).split(batch_size):
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x)
