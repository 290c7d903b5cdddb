"""Day 16: the gradients of a two-layer network by hand, checked against torch.autograd."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure, close

ORDER = ("W2", "b2", "W1", "b1", "x")  # the order backpropagation computes them


def check(module: ModuleType) -> None:
    import torch

    from tracks.pytorch.autograd import autograd_gradients, init_params

    params = init_params(5, 7, 3, seed=1)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    given = "init_params(5, 7, 3, seed=1), x of shape (8, 5), y = [0, 1, 2, 0, 1, 2, 0, 1]"
    loss, grads = module.forward_backward({k: v.clone() for k, v in params.items()}, x.clone(), y)
    want_loss, want = autograd_gradients(params, x, y)
    if abs(float(loss) - want_loss) > 1e-8:
        raise Failure(
            "the loss is wrong",
            given,
            f"{want_loss:.6f}",
            f"{float(loss):.6f}",
            "mean over the batch of -log softmax(z)[y]",
        )
    missing = [k for k in ORDER if k not in grads]
    if missing:
        raise Failure(
            f"no gradient for {', '.join(missing)}",
            given,
            f"keys {', '.join(ORDER)}",
            f"keys {', '.join(map(str, grads)) or 'none'}",
            HINTS[0],
        )
    for name in ORDER:
        got, expected = torch.as_tensor(grads[name]), want[name]
        if close(got, expected, atol=1e-8):
            continue
        if got.shape != expected.shape:
            raise Failure(
                f"d loss / d {name} has the wrong shape",
                given,
                str(tuple(expected.shape)),
                str(tuple(got.shape)),
                f"a gradient has the shape of its parameter: {name}",
            )
        ratio = float(got.double().norm() / expected.norm())
        hint = "compare this step of the chain rule with the forward line it undoes"
        if abs(ratio - len(y)) < 0.01:
            hint = "the loss is a mean over the batch: divide dz by the batch size"
        elif name in ("W1", "b1", "x") and abs(ratio - 0.5) < 0.01:
            hint = "the derivative of relu(h)² is 2·relu(h), not relu(h)"
        elif name in ("W2", "b2"):
            hint = "dz = softmax(z) - one_hot(y), divided by the batch size"
        raise Failure(
            f"d loss / d {name} differs from autograd",
            given,
            f"autograd's (norm {float(expected.norm()):.4g})",
            f"norm {float(got.double().norm()):.4g} ({ratio:.3g}x)",
            hint,
        )


HINTS = (
    "Start at the loss and walk back: dz, then W2 and b2, then da, dh, and W1, b1, x.",
    "dz is softmax(z) with 1 subtracted at each row's true class, divided by n; dW2 = aᵀ dz, db2 = Σ dz.",
    "da = dz W2ᵀ; dh = da · 2·relu(h); dW1 = xᵀ dh; db1 = Σ dh over rows; dx = dh W1ᵀ.",
)
EXERCISE = Exercise(
    16,
    "autograd",
    "backpropagation by hand",
    "beginner",
    HINTS,
    ("tracks/pytorch/autograd.py: forward_backward (tests/tracks/pytorch/test_autograd.py)",),
    check,
)
