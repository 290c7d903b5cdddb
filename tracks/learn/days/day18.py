"""Day 18: a leak-free split and early stopping, checked on a scripted validation curve."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure

CURVE = [1.0, 0.8, 0.7, 0.72, 0.75, 0.71, 0.74, 0.9, 0.95, 0.99, 0.6, 0.5]  # best at epoch 2 (0.7)


def check(module: ModuleType) -> None:
    import torch
    from torch import nn

    n = 50
    train, val, test = (list(part) for part in module.split_indices(n, seed=3))
    given = "split_indices(50, seed=3)"
    for name, other, a, b in (
        ("train", "validation", train, val),
        ("train", "test", train, test),
        ("validation", "test", val, test),
    ):
        shared = sorted(set(a) & set(b))
        if shared:
            raise Failure(
                f"the split leaks: {len(shared)} indices are in both {name} and {other}",
                given,
                "disjoint index lists",
                f"shared indices {shared[:5]}",
                "cut one shuffled order into consecutive slices: [:a], [a:b], [b:]",
            )
    sizes = (len(train), len(val), len(test))
    if sizes != (30, 10, 10) or sorted(train + val + test) != list(range(n)):
        raise Failure(
            "the split does not cover every example once in 60/20/20",
            given,
            "sizes (30, 10, 10)",
            f"sizes {sizes}",
            "n_train = int(0.6 * n); the rest is halved",
        )
    if train == sorted(train) and val == sorted(val):
        raise Failure(
            "the split is not shuffled",
            given,
            "a random order (data files are often sorted by class)",
            f"train starts {train[:5]}",
            "slice the randperm order, not range(n)",
        )

    model = nn.Linear(1, 1, bias=False)
    epoch = {"n": -1}

    def train_epoch() -> None:
        epoch["n"] += 1
        with torch.no_grad():
            model.weight.fill_(float(epoch["n"]))  # the weights remember the epoch they come from

    def val_loss() -> float:
        return CURVE[epoch["n"]]

    given = f"validation losses {CURVE}, patience 5, min_delta 0"
    best, run = module.fit(model, train_epoch, val_loss, max_epochs=len(CURVE), patience=5, min_delta=0.0)
    if best != 2:
        raise Failure(
            "the best epoch is wrong",
            given,
            "2 (loss 0.7)",
            str(best),
            "keep the epoch whose validation loss is the lowest so far",
        )
    if run != 8:
        hint = "stop once epoch - best_epoch >= patience: 5 epochs without improvement after epoch 2"
        if run == 9:
            hint = "off by one: with patience 5, epochs 3..7 are the five bad ones; stop after epoch 7"
        elif run == len(CURVE):
            hint = "the loop never stopped early: break when patience runs out"
        raise Failure("training stopped at the wrong epoch", given, "8 epochs run (0..7)", f"{run}", hint)
    if float(model.weight.detach()) != 2.0:
        raise Failure(
            "the model keeps the last weights, not the best",
            given,
            "the weights of epoch 2 restored",
            f"the weights of epoch {float(model.weight.detach()):g}",
            "model.load_state_dict(best_state) after the loop (deepcopy the state when it improves)",
        )
    best, run = module.fit(model, lambda: None, lambda: 1.0, max_epochs=20, patience=3, min_delta=0.1)
    if run != 4:
        raise Failure(
            "a flat curve does not stop after `patience` epochs",
            "a constant loss 1.0, patience 3",
            "4 epochs run",
            f"{run}",
            "improvement means loss < best - min_delta",
        )


HINTS = (
    "Two parts: a split that never shares an index, and a loop that remembers the best epoch.",
    "Split: order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]. "
    "Loop: improved when loss < best_loss - min_delta, else stop when epoch - best_epoch >= patience.",
    "On improvement: best_loss, best_epoch = loss, epoch; best_state = copy.deepcopy(model.state_dict()). "
    "After the loop: model.load_state_dict(best_state).",
)
EXERCISE = Exercise(
    18,
    "early_stopping",
    "validation split and early stopping",
    "intermediate",
    HINTS,
    ("tracks/pytorch/mlp.py: digits_splits, train (tests/tracks/pytorch/test_mlp.py)",),
    check,
)
