"""Exercise: backpropagation by hand equals torch.autograd, and both equal finite differences."""

from __future__ import annotations

import torch

from tracks.pytorch.autograd import (
    autograd_gradients,
    forward_backward,
    init_params,
    loss_only,
    numerical_gradient,
)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def test_hand_gradients_equal_autograd():
    params = init_params(5, 7, 3)
    x, y = batch()
    loss, grads = forward_backward(params, x, y)
    ref_loss, ref = autograd_gradients(params, x, y)
    assert abs(loss - ref_loss) < 1e-12
    assert set(grads) == set(ref) == {"W1", "b1", "W2", "b2", "x"}
    for name in grads:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-10, atol=1e-12)


def test_hand_gradients_equal_finite_differences():
    params = init_params(5, 7, 3, seed=2)
    x, y = batch(3)
    _, grads = forward_backward(params, x, y)
    for name in ("W1", "b2"):
        numeric = numerical_gradient(lambda: loss_only(params, x, y), params[name])
        torch.testing.assert_close(grads[name], numeric, rtol=1e-5, atol=1e-8)


def test_a_wrong_gradient_is_caught():
    """The check is worth something only if it fails on a bug: drop the factor 2 of d(relu²)."""
    params = init_params(5, 7, 3)
    x, y = batch()
    _, grads = forward_backward(params, x, y)
    _, ref = autograd_gradients(params, x, y)
    assert not torch.allclose(grads["W1"] / 2, ref["W1"])


def test_a_gradient_step_lowers_the_loss():
    params = init_params(5, 7, 3)
    x, y = batch()
    before, grads = forward_backward(params, x, y)
    stepped = {k: v - 0.1 * grads[k] for k, v in params.items()}
    assert float(loss_only(stepped, x, y)) < before
