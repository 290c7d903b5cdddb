"""A PyTorch training loop with a validation split, early stopping and best-weights restore.

Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes; bundled with scikit-learn, so it
works offline), split 60/20/20 into train/validation/test, features scaled to [0, 1].
Model: Linear -> ReLU -> Dropout -> Linear. Each epoch trains on shuffled mini-batches, then measures the
validation loss; the best weights so far are kept, and training stops after `patience` epochs without an
improvement of at least `min_delta`. The test split is touched once, at the end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = 64
    dropout: float = 0.1
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 10
    min_delta: float = 1e-4
    train_fraction: float = 0.6  # of the data; the rest is split evenly into validation and test
    train_limit: int | None = None  # keep only this many training examples (to provoke overfitting)
    seed: int = 0


@dataclass
class TrainResult:
    model: nn.Module
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    test_accuracy: float = 0.0


def digits_splits(config: MLPConfig):
    """(x, y) for train, validation and test, as float32 / int64 tensors."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
    x, y = x[order], y[order]
    n_train = int(config.train_fraction * len(x))
    n_val = (len(x) - n_train) // 2
    train = (x[:n_train], y[:n_train])
    if config.train_limit:
        train = (train[0][: config.train_limit], train[1][: config.train_limit])
    val = (x[n_train : n_train + n_val], y[n_train : n_train + n_val])
    test = (x[n_train + n_val :], y[n_train + n_val :])
    return train, val, test


def build_model(n_in: int, n_out: int, config: MLPConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_in, config.hidden), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, n_out)
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode (dropout off)."""
    model.eval()
    logits = model(x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train(config: MLPConfig = MLPConfig()) -> TrainResult:
    torch.manual_seed(config.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = digits_splits(config)
    model = build_model(x_train.shape[1], 10, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = TrainResult(model)
    best_state = copy.deepcopy(model.state_dict())
    shuffle = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.max_epochs):
        model.train()
        total, count = 0.0, 0
        for batch in torch.randperm(len(x_train), generator=shuffle).split(config.batch_size):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        result.train_loss.append(total / count)
        val_loss, _ = evaluate(model, x_val, y_val)
        result.val_loss.append(val_loss)
        if val_loss < result.best_val_loss - config.min_delta:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - result.best_epoch >= config.patience:
            result.stopped_early = True
            break
    model.load_state_dict(best_state)  # the weights of the best validation epoch, not the last
    _, result.test_accuracy = evaluate(model, x_test, y_test)
    return result
