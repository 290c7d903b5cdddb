"""Optimizers: Newton–Schulz numerics, Muon's update rule, nanochat's parameter groups, the schedules,
and a checkpointed optimizer state that resumes bit-identically."""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.train.optim import (
    Muon,
    apply_schedule,
    build_optimizers,
    load_optimizer_state,
    lr_multiplier,
    muon_momentum,
    optimizer_state,
    zeropower_via_newtonschulz5,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def orthogonality_error(X: torch.Tensor) -> float:
    """RMS deviation of the smaller Gram matrix from the identity."""
    if X.size(0) > X.size(1):
        X = X.mT
    k = X.size(0)
    return (torch.linalg.matrix_norm(X @ X.mT - torch.eye(k)) / k**0.5).item()


def small_model(seed: int = 0, n_embd: int = 64) -> GPT:
    model = GPT(GPTConfig(sequence_len=64, vocab_size=256, n_layer=2, n_head=2, n_kv_head=2, n_embd=n_embd))
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def fixed_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(seed))
    return x, torch.roll(x, -1, dims=1)


def train_step(model: GPT, optimizers, batch, step: int, num_iterations: int) -> float:
    loss = model(*batch)
    loss.backward()
    apply_schedule(optimizers, step, num_iterations)
    for optimizer in optimizers:
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss.item()


# --- Newton–Schulz ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 512), (512, 128), (33, 70)])
def test_newton_schulz_singular_values_near_one_for_rectangular(shape):
    for seed in range(5):
        G = randn(*shape, seed=seed)
        s = torch.linalg.svdvals(zeropower_via_newtonschulz5(G))
        assert s.min() > 0.5 and s.max() < 1.5, (seed, s.min(), s.max())
        normalised_input = G / G.norm()  # where the iteration starts
        assert orthogonality_error(zeropower_via_newtonschulz5(G)) < 0.5 * orthogonality_error(
            normalised_input
        )


@pytest.mark.parametrize("n", [32, 128, 256])
def test_newton_schulz_square_matrices(n):
    # A square Gaussian matrix has singular values near 0 (≈ n^-1.5 of its norm) that 5 steps cannot
    # lift; with condition number ≤ 100 every one lands in [0.5, 1.5].
    g = torch.Generator().manual_seed(n)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    G = U @ torch.diag(torch.logspace(0, -2, n)) @ V.T
    X = zeropower_via_newtonschulz5(G)
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.5 and s.max() < 1.5
    assert orthogonality_error(X) < 0.4 * orthogonality_error(G / G.norm())

    gaussian = torch.linalg.svdvals(zeropower_via_newtonschulz5(randn(n, n, seed=n)))
    assert gaussian.max() < 1.5
    assert ((gaussian > 0.5) & (gaussian < 1.5)).float().mean() > 0.9


def test_newton_schulz_keeps_singular_vectors():
    G = randn(48, 96)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    inner = U.T @ zeropower_via_newtonschulz5(G) @ Vh.T  # diagonal iff the singular vectors are kept
    off_diagonal = inner - torch.diag(torch.diagonal(inner))
    assert off_diagonal.abs().max() < 1e-4
    assert torch.diagonal(inner).min() > 0.5


def test_newton_schulz_tall_is_transpose_of_wide():
    G = randn(100, 30)
    assert torch.equal(zeropower_via_newtonschulz5(G), zeropower_via_newtonschulz5(G.T).T)


def test_newton_schulz_dtype_and_errors():
    G = randn(64, 128)
    assert zeropower_via_newtonschulz5(G).dtype == torch.float32  # fp32 on CPU
    low = zeropower_via_newtonschulz5(G, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), zeropower_via_newtonschulz5(G), atol=0.05, rtol=0.05)
    assert torch.equal(zeropower_via_newtonschulz5(torch.zeros(8, 4)), torch.zeros(8, 4))
    with pytest.raises(ValueError, match="2D"):
        zeropower_via_newtonschulz5(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="steps"):
        zeropower_via_newtonschulz5(G, steps=0)


# --- Muon --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_muon_rejects_non_matrices(shape):
    with pytest.raises(ValueError, match="2D"):
        Muon([torch.nn.Parameter(torch.zeros(shape))])
    muon = Muon([torch.nn.Parameter(torch.zeros(3, 4))])
    with pytest.raises(ValueError, match="2D"):
        muon.add_param_group({"params": [torch.nn.Parameter(torch.zeros(shape))]})
    assert len(muon.param_groups) == 1


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"momentum": 1.0}, {"momentum": -0.1}, {"ns_steps": 0}])
def test_muon_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.zeros(3, 4))], **kwargs)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_update_rule(nesterov):
    lr, m = 0.1, 0.9
    p0 = randn(96, 32, seed=0)  # tall: scaled by sqrt(96 / 32)
    g1, g2 = randn(96, 32, seed=1), randn(96, 32, seed=2)
    p = torch.nn.Parameter(p0.clone())
    muon = Muon([p], lr=lr, momentum=m, nesterov=nesterov)
    for g in (g1, g2):
        p.grad = g.clone()
        muon.step()

    buf1 = (1 - m) * g1
    buf2 = m * buf1 + (1 - m) * g2
    d1 = torch.lerp(g1, buf1, m) if nesterov else buf1
    d2 = torch.lerp(g2, buf2, m) if nesterov else buf2
    scale = 3**0.5
    expected = (
        p0 - lr * scale * zeropower_via_newtonschulz5(d1) - lr * scale * zeropower_via_newtonschulz5(d2)
    )
    torch.testing.assert_close(p.detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(muon.state[p]["momentum_buffer"], buf2)


def test_muon_wide_matrix_is_not_scaled_and_grad_is_untouched():
    p = torch.nn.Parameter(torch.zeros(16, 64))
    grad = randn(16, 64)
    p.grad = grad.clone()
    Muon([p], lr=1.0, momentum=0.0).step()
    torch.testing.assert_close(p.detach(), -zeropower_via_newtonschulz5(grad))
    assert torch.equal(p.grad, grad)


def test_muon_per_group_lr_and_momentum():
    a = torch.nn.Parameter(torch.zeros(8, 8))
    b = torch.nn.Parameter(torch.zeros(8, 8))
    muon = Muon([{"params": [a], "lr": 0.0}, {"params": [b], "lr": 0.5, "momentum": 0.5}])
    a.grad, b.grad = randn(8, 8, seed=3), randn(8, 8, seed=3)
    muon.step()
    assert torch.equal(a.detach(), torch.zeros(8, 8))
    assert b.detach().abs().sum() > 0
    assert muon.param_groups[0]["momentum"] == 0.95 and muon.param_groups[1]["momentum"] == 0.5


# --- nanochat's groups ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_embd", [64, 768])
def test_build_optimizers_groups_every_parameter_once(n_embd):
    model = small_model(n_embd=n_embd)
    adamw, muon = build_optimizers(
        model, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.1
    )
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, Muon)
    grouped = [p for o in (adamw, muon) for g in o.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}

    scale = (n_embd / 768) ** -0.5
    head, wte = adamw.param_groups
    assert head["name"] == "lm_head" and head["params"] == [model.lm_head.weight]
    assert wte["name"] == "wte" and wte["params"] == [model.transformer.wte.weight]
    assert head["lr"] == head["initial_lr"] == pytest.approx(0.004 * scale)
    assert wte["lr"] == wte["initial_lr"] == pytest.approx(0.2 * scale)
    assert adamw.defaults["betas"] == (0.8, 0.95) and adamw.defaults["eps"] == 1e-10
    assert adamw.defaults["weight_decay"] == 0.1 and not adamw.defaults["fused"]

    (matrices,) = muon.param_groups
    assert matrices["name"] == "matrix" and matrices["lr"] == matrices["initial_lr"] == 0.02
    assert matrices["momentum"] == 0.95 and matrices["nesterov"]
    assert {id(p) for p in matrices["params"]} == {id(p) for p in model.transformer.h.parameters()}


def test_build_optimizers_refuses_unknown_parameters():
    model = small_model()
    model.extra = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"extra\.weight"):
        build_optimizers(model)


def test_muon_and_adamw_train_a_small_gpt():
    torch.manual_seed(0)
    model = small_model()
    optimizers = build_optimizers(model)
    batch = fixed_batch()
    losses = [train_step(model, optimizers, batch, step, 20) for step in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    # the lm_head starts at zero, so the first step only moves it; the blocks must move afterwards
    assert model.transformer.h[0].attn.c_proj.weight.abs().sum() > 0


def test_training_is_deterministic():
    def run() -> list[torch.Tensor]:
        model = small_model(seed=3)
        optimizers = build_optimizers(model)
        for step in range(5):
            train_step(model, optimizers, fixed_batch(), step, 5)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


# --- schedules -------------------------------------------------------------------------------------------


def test_lr_multiplier_shape():
    kw = {"num_iterations": 100, "warmup_ratio": 0.1, "warmdown_ratio": 0.2, "final_lr_frac": 0.1}
    assert lr_multiplier(0, **kw) == pytest.approx(0.1)  # warmup starts above zero
    assert lr_multiplier(4, **kw) == pytest.approx(0.5)
    assert lr_multiplier(9, **kw) == 1.0  # warmup ends
    assert lr_multiplier(10, **kw) == 1.0
    assert lr_multiplier(80, **kw) == 1.0  # warmdown starts after this step
    assert lr_multiplier(81, **kw) == pytest.approx(19 / 20 + 1 / 20 * 0.1)
    assert lr_multiplier(90, **kw) == pytest.approx(0.5 + 0.5 * 0.1)
    assert lr_multiplier(100, **kw) == pytest.approx(0.1)  # ends at final_lr_frac
    values = [lr_multiplier(s, **kw) for s in range(101)]
    assert values == sorted(values[:10]) + values[10:]  # rises, then never rises again
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_lr_multiplier_defaults_and_edges():
    assert lr_multiplier(0, 10) == 1.0  # no warmup by default
    assert lr_multiplier(10, 10) == 0.0  # warmdown to zero
    assert lr_multiplier(5, 10, warmdown_ratio=0.0) == 1.0
    assert lr_multiplier(10, 10, warmdown_ratio=0.0) == 1.0
    assert lr_multiplier(0, 1, warmup_ratio=1.0, warmdown_ratio=0.0) == 1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 0), {}, "num_iterations"),
        ((-1, 10), {}, "outside"),
        ((11, 10), {}, "outside"),
        ((0, 10), {"warmup_ratio": -0.1}, "warmup_ratio"),
        ((0, 10), {"warmdown_ratio": 1.5}, "warmdown_ratio"),
        ((0, 10), {"final_lr_frac": 2.0}, "final_lr_frac"),
        ((0, 10), {"warmup_ratio": 0.6, "warmdown_ratio": 0.6}, "at most 1"),
    ],
)
def test_lr_multiplier_validates(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_multiplier(*args, **kwargs)


def test_muon_momentum_ramp():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)
    assert muon_momentum(0, ramp_steps=0) == 0.95
    for bad in ({"step": -1}, {"step": 0, "ramp_steps": -5}, {"step": 0, "end": 1.0}):
        with pytest.raises(ValueError):
            muon_momentum(**bad)


def test_apply_schedule_sets_lr_and_momentum():
    model = small_model()
    adamw, muon = optimizers = build_optimizers(model)
    assert apply_schedule(optimizers, 95, 100, warmdown_ratio=0.1, momentum_ramp_steps=190) == 0.5
    for group in (*adamw.param_groups, *muon.param_groups):
        assert group["lr"] == pytest.approx(0.5 * group["initial_lr"])
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.90)
    assert "momentum" not in adamw.param_groups[0]
    apply_schedule(optimizers, 0, 100)
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.85)
    assert muon.param_groups[0]["lr"] == 0.02

    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="initial_lr"):
        apply_schedule([plain], 0, 10)


# --- checkpointed state ----------------------------------------------------------------------------------


def test_optimizer_state_round_trip_resumes_bit_identically():
    n, split = 8, 4
    batch = fixed_batch()

    uninterrupted = small_model(seed=5)
    optimizers = build_optimizers(uninterrupted)
    for step in range(n):
        train_step(uninterrupted, optimizers, batch, step, n)

    first = small_model(seed=5)
    optimizers = build_optimizers(first)
    for step in range(split):
        train_step(first, optimizers, batch, step, n)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": optimizer_state(optimizers)}, buffer)
    del first, optimizers

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = small_model(seed=99)  # different weights: everything must come from the file
    resumed.load_state_dict(saved["model"])
    optimizers = build_optimizers(resumed)
    load_optimizer_state(optimizers, saved["optim"])
    assert optimizers[1].state[resumed.transformer.h[0].mlp.c_fc.weight]["momentum_buffer"].abs().sum() > 0
    for step in range(split, n):
        train_step(resumed, optimizers, batch, step, n)

    for (name, a), b in zip(uninterrupted.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_load_optimizer_state_checks_its_input():
    optimizers = build_optimizers(small_model())
    state = optimizer_state(optimizers)
    with pytest.raises(ValueError, match="optimizers"):
        load_optimizer_state(optimizers, {"model": {}})
    with pytest.raises(ValueError, match=r"\['Muon', 'AdamW'\]"):
        load_optimizer_state(optimizers, {"optimizers": state["optimizers"][::-1]})
