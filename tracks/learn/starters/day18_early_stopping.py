"""Day 18: a validation split and early stopping.

1. `split_indices(n, seed)`: shuffle range(n) with `torch.randperm(n, generator=...manual_seed(seed))` and
   cut it 60/20/20 into (train, validation, test) index lists that never share an index.
2. `fit(model, train_epoch, val_loss, max_epochs, patience, min_delta)`: call train_epoch() then
   val_loss() each epoch; keep the best weights; stop after `patience` epochs without an improvement of at
   least min_delta; restore the best weights; return (best_epoch, epochs_run), epochs counted from 0.
"""

import copy

import torch


def split_indices(n: int, seed: int = 0):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    # TODO: cut `order` into train (60%), validation and test (the rest, half each)
    raise NotImplementedError("the three slices of `order`")


def fit(model, train_epoch, val_loss, max_epochs: int = 100, patience: int = 5, min_delta: float = 0.0):
    best_loss, best_epoch = float("inf"), -1
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(max_epochs):
        train_epoch()
        loss = val_loss()
        # TODO: remember the best epoch and its weights; stop when patience runs out
        raise NotImplementedError("the early-stopping rule")
    return best_epoch, epoch + 1
