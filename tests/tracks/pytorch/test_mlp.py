"""Exercise: a training loop with validation, early stopping and best-weights restore (digits)."""

from __future__ import annotations

import pytest

from tracks.pytorch.mlp import MLPConfig, digits_splits, evaluate, train


@pytest.fixture(scope="module")
def trained():
    return train(MLPConfig(max_epochs=60, patience=8))


def test_it_learns_the_digits(trained):
    assert trained.test_accuracy > 0.93  # chance is 0.10
    assert trained.train_loss[-1] < trained.train_loss[0] / 5


def test_the_best_weights_are_restored(trained):
    _, (x_val, y_val), _ = digits_splits(MLPConfig())
    val_loss, _ = evaluate(trained.model, x_val, y_val)
    assert val_loss == pytest.approx(trained.best_val_loss, rel=1e-6)
    assert trained.best_val_loss == min(trained.val_loss)


def test_early_stopping_stops_an_overfitting_run():
    # 60 training images, no dropout, a large learning rate: validation loss turns up within a few epochs
    result = train(MLPConfig(train_limit=60, dropout=0.0, lr=0.05, hidden=256, max_epochs=300, patience=5))
    assert result.stopped_early
    assert len(result.val_loss) == result.best_epoch + 1 + 5  # exactly `patience` epochs past the best
    assert result.val_loss[-1] > result.best_val_loss


def test_the_same_seed_gives_the_same_run():
    a = train(MLPConfig(max_epochs=3, seed=5))
    b = train(MLPConfig(max_epochs=3, seed=5))
    assert a.val_loss == b.val_loss and a.test_accuracy == b.test_accuracy
