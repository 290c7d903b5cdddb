"""Day 17: one training epoch; the check watches every forward, zero_grad, backward and step."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure


def check(module: ModuleType) -> None:
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    labels = {row.numpy().tobytes(): int(label) for row, label in zip(x, y, strict=True)}
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    model.eval()  # the learner must switch it to training mode
    events: list[str] = []
    batches: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def record_forward(mod, inputs, output):
        events.append("forward")
        batches.append((inputs[0].detach(), output.detach(), mod.training))

    model.register_forward_hook(record_forward)
    for p in model.parameters():
        p.register_hook(lambda grad: events.append("backward") or None)

    class Watched(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            events.append("zero_grad")
            super().zero_grad(set_to_none)

        def step(self, closure=None):
            events.append("step")
            return super().step(closure)

    given = "40 examples, batch_size 16, a model with dropout handed over in eval mode"
    result = module.train_epoch(model, Watched(model.parameters(), lr=0.1), x, y, 16, g)
    if isinstance(result, torch.Tensor) or not isinstance(result, float):
        raise Failure(
            "the return value is not a Python float",
            given,
            "a float (the epoch's mean loss)",
            type(result).__name__,
            "accumulate loss.item() * len(batch): .item() also frees the graph",
        )
    seen = sum(len(b[0]) for b in batches)
    if seen != len(x) or len(batches) != 3:
        raise Failure(
            "not every example was trained on exactly once",
            given,
            "3 batches (16 + 16 + 8) covering all 40 examples",
            f"{len(batches)} batches, {seen} rows",
            "one forward per batch of torch.randperm(len(x)).split(batch_size)",
        )
    if not all(training for _, _, training in batches):
        raise Failure(
            "the model was trained in eval mode",
            given,
            "model.training True in every forward",
            "False: dropout was off",
            "call model.train() at the start of the epoch",
        )
    steps = events.count("step")
    if steps != 3:
        raise Failure(
            "the optimizer did not step once per batch",
            given,
            "3 steps",
            f"{steps}",
            "optimizer.step() after loss.backward(), inside the batch loop",
        )
    per_batch = events_between_steps(events)
    for i, between in enumerate(per_batch):
        before = between[: between.index("backward")] if "backward" in between else between
        if "zero_grad" in between and "zero_grad" not in before:
            raise Failure(
                f"gradients were zeroed after backward (batch {i + 1}): step saw zeros",
                given,
                "zero_grad → backward → step",
                " → ".join(dedupe(between)),
                "move optimizer.zero_grad() before loss.backward()",
            )
        if i > 0 and "zero_grad" not in before:  # the first batch starts from fresh (None) gradients
            raise Failure(
                f"gradients accumulate across batches (batch {i + 1} kept batch {i}'s)",
                given,
                "zero_grad, then backward and step, for each batch",
                " → ".join(dedupe(between)),
                "call optimizer.zero_grad() before loss.backward(): .grad adds up otherwise",
            )
    losses = []
    for inputs, outputs, _ in batches:
        target = torch.tensor([labels[row.numpy().tobytes()] for row in inputs])
        losses.append((float(nn.functional.cross_entropy(outputs, target)), len(inputs)))
    mean = sum(loss * n for loss, n in losses) / len(x)
    if abs(result - mean) > 1e-4:
        hint = "weight each batch's loss by its size and divide by the number of examples"
        if abs(result - losses[-1][0]) < 1e-6:
            hint = "you returned the last batch's loss; return the mean over the epoch"
        raise Failure(
            "the returned loss is not the epoch's mean per example",
            given,
            f"{mean:.5f}",
            f"{result:.5f}",
            hint,
        )


def events_between_steps(events: list[str]) -> list[list[str]]:
    """The events before each step (since the previous one)."""
    out, current = [], []
    for event in events:
        if event == "step":
            out.append(current)
            current = []
        else:
            current.append(event)
    return out


def dedupe(events: list[str]) -> list[str]:
    return [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]


HINTS = (
    "Each batch: forward, loss, zero the old gradients, backward, step; and model.train() once first.",
    "loss = cross_entropy(model(x[batch]), y[batch]); optimizer.zero_grad(); loss.backward(); "
    "optimizer.step().",
    "Accumulate `total += loss.item() * len(batch)` and return total / len(x).",
)
EXERCISE = Exercise(
    17,
    "training_loop",
    "an MLP training loop",
    "beginner",
    HINTS,
    ("tracks/pytorch/mlp.py: train (tests/tracks/pytorch/test_mlp.py)",),
    check,
)
