"""Day 17: one epoch of a PyTorch training loop.

Write `train_epoch(model, optimizer, x, y, batch_size, generator)`: put the model in training mode, visit
every example once in a shuffled order (`torch.randperm(len(x), generator=generator)`), and for each
mini-batch compute the cross-entropy, backpropagate and step. Return the epoch's mean loss per example as
a Python float.
"""

import torch
from torch import nn


def train_epoch(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator):
    total = 0.0
    for batch in torch.randperm(len(x), generator=generator).split(batch_size):
        # TODO: the loss of this batch, then the three optimizer/backward calls in the right order
        raise NotImplementedError("the body of the batch loop")
    return total / len(x)
