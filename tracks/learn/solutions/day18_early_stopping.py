"""Day 18: a validation split and early stopping (reference: tracks/pytorch/mlp.py `digits_splits`,
`train`)."""

import copy

import torch


def split_indices(n: int, seed: int = 0):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(0.6 * n)
    n_val = (n - n_train) // 2
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def fit(model, train_epoch, val_loss, max_epochs: int = 100, patience: int = 5, min_delta: float = 0.0):
    best_loss, best_epoch = float("inf"), -1
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(max_epochs):
        train_epoch()
        loss = val_loss()
        if loss < best_loss - min_delta:
            best_loss, best_epoch = loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return best_epoch, epoch + 1
