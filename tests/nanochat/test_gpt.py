"""The model: config rules, nanochat parameter layout, cached forward == full forward, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import GPT, GPTConfig, apply_rotary
from nanochat.kv_cache import KVCache


def test_state_dict_layout_matches_nanochat():
    config = GPTConfig(sequence_len=256, vocab_size=2048, n_layer=2, n_head=2, n_kv_head=2, n_embd=128)
    state = GPT(config).state_dict()
    expected = ["transformer.wte.weight"]
    for i in range(2):
        expected += [f"transformer.h.{i}.attn.c_{n}.weight" for n in ("q", "k", "v", "proj")]
        expected += [f"transformer.h.{i}.mlp.c_fc.weight", f"transformer.h.{i}.mlp.c_proj.weight"]
    expected.append("lm_head.weight")
    assert list(state) == expected  # rotary cos/sin are non-persistent buffers
    assert state["transformer.h.0.mlp.c_fc.weight"].shape == (512, 128)
    assert state["transformer.h.1.mlp.c_proj.weight"].shape == (128, 512)


def test_gqa_projection_shapes():
    config = GPTConfig(sequence_len=64, vocab_size=300, n_layer=1, n_head=6, n_kv_head=2, n_embd=192)
    state = GPT(config).state_dict()
    assert state["transformer.h.0.attn.c_q.weight"].shape == (192, 192)
    assert state["transformer.h.0.attn.c_k.weight"].shape == (64, 192)
    assert state["transformer.h.0.attn.c_v.weight"].shape == (64, 192)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 100, "n_head": 3}, "not divisible"),
        ({"n_head": 6, "n_kv_head": 4}, "multiple of n_kv_head"),
        ({"n_layer": 0}, "positive integer"),
        ({"vocab_size": 1.5}, "positive integer"),
        ({"n_embd": 6, "n_head": 2, "n_kv_head": 2}, "even"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_config_from_dict():
    old = {"sequence_len": 64, "vocab_size": 300, "n_layer": 2, "n_head": 4, "n_embd": 64}
    assert GPTConfig.from_dict(old).n_kv_head == 4  # older checkpoints have no n_kv_head
    with pytest.raises(ValueError, match="unknown model_config keys: bias"):
        GPTConfig.from_dict({**old, "bias": True})
    with pytest.raises(ValueError, match="missing: n_layer"):
        GPTConfig.from_dict({k: v for k, v in old.items() if k != "n_layer"})


@pytest.mark.parametrize(
    ("depth", "width", "heads"), [(2, 128, 1), (4, 256, 2), (20, 1280, 10), (32, 2048, 16)]
)
def test_depth_rule(depth, width, heads):
    config = GPTConfig.for_depth(depth, vocab_size=65536)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_kv_head) == (depth, width, heads, heads)


def test_rotary_tables_are_bf16_rounded_fp32():
    model = GPT(GPTConfig(sequence_len=16, vocab_size=300, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    assert model.cos.dtype == torch.bfloat16 and model.cos.shape == (1, 160, 1, 8)
    hd = 16
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    angle = 7 * inv_freq[3]
    assert model.cos[0, 7, 0, 3].item() == torch.tensor(math.cos(angle)).bfloat16().item()
    # rotation preserves the norm up to the bf16 rounding of cos/sin
    x = torch.randn(1, 16, 2, hd)
    y = apply_rotary(x, model.cos[:, :16], model.sin[:, :16])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-2, atol=1e-3)


def test_loss_is_cross_entropy_of_softcapped_logits(make_model):
    model = make_model()
    idx = torch.randint(0, 300, (2, 12))
    targets = torch.randint(0, 300, (2, 12))
    targets[0, :3] = -1  # ignored positions
    logits = model(idx)
    assert logits.abs().max() <= 15.0
    expected = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    torch.testing.assert_close(model(idx, targets), expected)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_decode_equals_full_forward(make_model, n_kv_head):
    model = make_model(n_head=4, n_kv_head=n_kv_head)
    idx = torch.randint(0, 300, (1, 30))
    full = model(idx)
    cache = KVCache(2, n_kv_head, 16, 1, 64)
    with torch.no_grad():
        steps = [model(idx[:, :11], kv_cache=cache)]  # prefill
        steps += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(11, 30)]  # one at a time
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=2e-5)
    assert cache.lengths == [30]


def test_chunked_prefill_and_last_only_equal_full_forward(make_model):
    model = make_model()
    idx = torch.randint(0, 300, (1, 40))
    full = model(idx)
    cache = KVCache(2, 4, 16, 3, 64)
    with torch.no_grad():
        chunks = [model(idx[:, a : a + 16], kv_cache=cache, start_row=2) for a in range(0, 40, 16)]
        torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=0, atol=2e-5)
        cache.reset_row(1)
        last = model(idx[:, :25], kv_cache=cache, start_row=1, last_only=True)
    assert last.shape == (1, 1, model.config.vocab_size)
    torch.testing.assert_close(last[0, 0], full[0, 24], rtol=0, atol=2e-5)
    assert cache.lengths == [0, 25, 40]


def test_rows_at_different_positions_decode_together(make_model):
    """One forward over rows of lengths 5, 20 and 13 gives each row its own full-forward logits."""
    model = make_model(n_head=4, n_kv_head=2)
    seqs = [torch.randint(0, 300, (1, n)) for n in (6, 21, 14)]
    cache = KVCache(2, 2, 16, 3, 32)
    with torch.no_grad():
        for row, s in enumerate(seqs):
            model(s[:, :-1], kv_cache=cache, start_row=row)
        last = torch.cat([s[:, -1:] for s in seqs], 0)
        batched = model(last, kv_cache=cache)
    for row, s in enumerate(seqs):
        torch.testing.assert_close(batched[row, 0], model(s)[0, -1], rtol=0, atol=2e-5)


def test_cache_bounds_are_enforced(make_model):
    model = make_model()
    cache = KVCache(2, 4, 16, 2, 8)
    with pytest.raises(ValueError, match="past the cache length"):
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="outside a cache"):
        model(torch.zeros(3, 1, dtype=torch.long), kv_cache=cache)


def test_bfloat16_model_tracks_float32(make_model):
    """bf16 weights (the CUDA dtype; AMX makes it fast on this CPU too) stay close to fp32."""
    model = make_model(n_embd=128)
    idx = torch.randint(0, 300, (2, 24))
    ref = model(idx)
    bf16 = make_model(n_embd=128).to(torch.bfloat16)
    out = bf16(idx)
    assert out.dtype == torch.bfloat16
    agree = (out.float().argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.9, agree
    assert (out.float() - ref).abs().max().item() < 0.5


def test_generate_reference_sampler_greedy_matches_argmax(make_model):
    model = make_model()
    prompt = [1, 2, 3]
    tokens = list(model.generate(prompt, max_tokens=5, temperature=0.0))
    ids = list(prompt)
    for _ in range(5):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert tokens == ids[3:]


def test_fused_qkv_keeps_the_parameters_and_the_outputs(make_model, tmp_path):
    """One q/k/v matmul per layer: the state dict (names, values, bytes) and a saved file's reload are as
    before, the outputs equal the unfused model's, and the fused weight shares the parameters' storage."""
    model = make_model(n_head=4, n_kv_head=2)
    idx = torch.randint(0, 300, (2, 12))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_bytes = sum(p.nbytes for p in model.parameters())
    with torch.no_grad():
        before = model(idx)
        assert model.fuse_qkv()
        after = model(idx)
    attn = model.transformer.h[0].attn
    assert attn.qkv_weight.shape == (64 + 2 * 32, 64) and attn._fused()
    assert torch.equal(after, before)
    state = model.state_dict()
    assert list(state) == list(before_state)
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    assert sum(p.nbytes for p in model.parameters()) == before_bytes
    torch.save(state, tmp_path / "model.pt")
    fresh = GPT(model.config)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before_state.items())
    with torch.no_grad():
        attn.c_k.weight.mul_(2)  # an in-place update (an optimizer's) shows in the fused weight
    assert torch.equal(attn.qkv_weight[64:96], attn.c_k.weight)


def test_a_fused_model_moved_to_another_dtype_runs_unfused(make_model):
    model = make_model()
    assert model.fuse_qkv()
    model.to(torch.bfloat16)  # new storage for the parameters: the fused weight is stale, and not used
    assert not model.transformer.h[0].attn._fused()
    idx = torch.randint(0, 300, (1, 8))
    torch.testing.assert_close(model(idx).float(), make_model().to(torch.bfloat16)(idx).float())


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_the_decode_step_equals_the_cached_forward(make_model, n_kv_head):
    """`GPT.decode` (positions and a mask from `KVCache.decode_plan`) gives each row of a mixed-length batch
    the logits of the general cached forward, with and without fused q/k/v; rows at one position need no
    mask."""
    model = make_model(n_head=4, n_kv_head=n_kv_head)
    seqs = [torch.randint(0, 300, (1, n)) for n in (6, 21, 14)]
    with torch.no_grad():
        for fused in (False, True):
            if fused:
                assert model.fuse_qkv()
            cache = KVCache(2, n_kv_head, 16, 4, 32)
            for row, s in enumerate(seqs):
                model(s[:, :-1], kv_cache=cache, start_row=row)
            last = torch.cat([s[:, -1:] for s in seqs], 0)
            positions, mask, key_len = cache.decode_plan(3)
            assert positions.tolist() == [5, 20, 13] and mask.shape == (3, 1, 1, 21) and key_len == 21
            assert mask[0, 0, 0].tolist() == [True] * 6 + [False] * 15
            logits = model.decode(last, positions, cache.k, cache.v, mask, key_len, fused)
            cache.advance_rows(3)
            assert cache.lengths == [6, 21, 14, 0]
            for row, s in enumerate(seqs):
                torch.testing.assert_close(logits[row], model(s)[0, -1], rtol=0, atol=2e-5)
    one = KVCache(2, n_kv_head, 16, 1, 32)
    with torch.no_grad():
        model(seqs[0][:, :-1], kv_cache=one)
        positions, mask, key_len = one.decode_plan(1)
        assert mask is None and key_len == 6
        logits = model.decode(seqs[0][:, -1:], positions, one.k, one.v, mask, key_len, True)
    torch.testing.assert_close(logits[0], model(seqs[0])[0, -1], rtol=0, atol=2e-5)


def test_a_padded_decode_plan_keeps_extra_rows_inside_the_cache():
    cache = KVCache(1, 1, 2, 4, 8)
    cache.lengths = [3, 5, 8, 0]  # row 2 full (a stale row), row 3 empty
    positions, mask, key_len = cache.decode_plan(2, pad_to=4)
    assert positions.tolist() == [3, 5, 7, 0] and key_len == 6 and mask.shape == (4, 1, 1, 6)
    with pytest.raises(ValueError, match="outside a cache of 4"):
        cache.decode_plan(2, pad_to=5)
    cache.lengths = [8, 0, 0, 0]
    with pytest.raises(ValueError, match="past the cache length 8"):
        cache.decode_plan(1)
