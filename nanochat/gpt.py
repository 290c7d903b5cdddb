"""The GPT model in the public nanochat architecture.

Rotary embeddings (base 10000, cos/sin rounded to bf16), QK-norm, parameter-free RMSNorm, relu² MLP,
grouped-query attention, untied token embedding and head, logit softcap 15, no biases. Parameter names
and shapes are identical to nanochat checkpoints, so their state dicts load with `strict=True`.

The model works on token ids only. It runs a plain causal forward (training, scoring) or a cached forward
over rows of a `KVCache`, where each row may sit at a different position: that is what lets the engine
decode many independent sequences in one batch. Tokenization, sampling and checkpoint files live elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from nanochat.kv_cache import AttentionPlan, KVCache

ROTARY_BASE = 10000
LOGIT_SOFTCAP = 15.0
ROTARY_LENGTH_FACTOR = 10  # cos/sin are precomputed for 10x the training sequence length


@dataclass(frozen=True)
class GPTConfig:
    """The `model_config` of a nanochat checkpoint's meta file."""

    sequence_len: int = 1024
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model_config.{f.name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        """Build from a checkpoint's `model_config`; older checkpoints have no `n_kv_head` (= n_head)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model_config keys: {', '.join(unknown)}")
        missing = sorted(known - set(data) - {"n_kv_head"})
        if missing:
            raise ValueError(f"model_config is missing: {', '.join(missing)}")
        values = dict(data)
        values.setdefault("n_kv_head", values["n_head"])
        return cls(**values)

    @classmethod
    def for_depth(cls, depth: int, vocab_size: int, sequence_len: int = 1024) -> GPTConfig:
        """nanochat's single-knob sizing: width = 64·depth, heads of dimension 128 (at least one)."""
        n_embd = depth * 64
        n_head = max(1, math.ceil(n_embd / 128))
        while n_embd % n_head:
            n_head += 1
        return cls(sequence_len, vocab_size, depth, n_head, n_head, n_embd)

    def to_dict(self) -> dict:
        return asdict(self)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim, eps = the dtype's machine epsilon (as nanochat)."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, time, heads, head_dim) by position; halves are (x1, x2) as in nanochat."""
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.qkv_weight: torch.Tensor | None = None  # set by `fuse_qkv`; not a parameter or buffer

    def fuse_qkv(self) -> bool:
        """Put c_q, c_k and c_v's weights in one tensor, `qkv_weight`, and make the three parameters views
        of it: one matmul then projects all three, and the parameters (their names, values and bytes) stay
        as they were. False, and nothing changed, when they are not plain linears of one dtype and device
        (the int8 ones of nanochat/quantize.py)."""
        linears = (self.c_q, self.c_k, self.c_v)
        if not all(type(m) is nn.Linear for m in linears):
            return False
        weights = [m.weight for m in linears]
        if len({(w.dtype, w.device) for w in weights}) != 1 or weights[0].is_meta:
            return False
        if self._fused():
            return True
        with torch.no_grad():
            fused = torch.cat([w.detach() for w in weights])
        start = 0
        for m, w in zip(linears, weights, strict=True):
            rows = w.shape[0]
            m.weight = nn.Parameter(fused[start : start + rows], requires_grad=w.requires_grad)
            start += rows
        self.qkv_weight = fused
        return True

    def _fused(self) -> bool:
        """`qkv_weight` is still what c_q, c_k and c_v hold (a `.to()` or a load gives them new storage)."""
        fused = self.qkv_weight
        return (
            fused is not None
            and self.c_q.weight.data_ptr() == fused.data_ptr()
            and self.c_v.weight.data_ptr() == fused[-self.c_v.weight.shape[0] :].data_ptr()
        )

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fused: bool = False):
        """q, k (rotated, then RMS-normed) and v, each (batch, heads, time, head_dim). `fused`: use
        `qkv_weight` (the caller checked it is current)."""
        B, T, _ = x.size()
        hq, hkv = self.n_head, self.n_kv_head
        if fused:
            qkv = F.linear(x, self.qkv_weight).view(B, T, hq + 2 * hkv, self.head_dim)
            qk, v = qkv[:, :, : hq + hkv], qkv[:, :, hq + hkv :]
        else:
            q = self.c_q(x).view(B, T, hq, self.head_dim)
            k = self.c_k(x).view(B, T, hkv, self.head_dim)
            v = self.c_v(x).view(B, T, hkv, self.head_dim)
            qk = torch.cat([q, k], 2)
        qk = rms_norm(apply_rotary(qk, cos, sin))  # q and k in one call each: both are per head
        q, k = qk.split([hq, hkv], 2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        plan: AttentionPlan | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.size()
        q, k, v = self.project(x, cos, sin, fused=self._fused())
        gqa = self.n_kv_head != self.n_head
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            k, v = kv_cache.write(self.layer_idx, plan, k, v)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=plan.mask, is_causal=plan.is_causal, enable_gqa=gqa
            )
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)

    def decode(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        key_len: int,
        fused: bool,
    ) -> torch.Tensor:
        """One token for each of rows 0..batch-1 (x: (batch, 1, n_embd)), row b at `positions[b]`: its
        key and value go into `keys`/`values` (this layer's (rows, n_kv_head, max_len, head_dim) cache)
        and it attends to keys [0, key_len) where `mask` (batch, 1, 1, key_len) allows (None: all).
        `fused`: `fuse_qkv` succeeded (checked by the caller, once: a compiled step cannot ask)."""
        B = x.size(0)
        q, k, v = self.project(x, cos, sin, fused)
        rows = torch.arange(B, device=x.device)
        keys[rows, :, positions] = k[:, :, 0]
        values[rows, :, positions] = v[:, :, 0]
        y = F.scaled_dot_product_attention(
            q,
            keys[:B, :, :key_len],
            values[:B, :, :key_len],
            attn_mask=mask,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.c_proj(y.transpose(1, 2).reshape(B, 1, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None, plan=None):
        x = x + self.attn(rms_norm(x), cos, sin, kv_cache, plan)
        return x + self.mlp(rms_norm(x))


class _NoInitOnMeta(TorchFunctionMode):
    """Initialisers (`torch.nn.init.*`, a tensor's `normal_`, `uniform_`, ...) leave meta tensors as they are:
    a meta tensor has no values to set, and torch computes them through its Python reference kernels,
    whose first use imports torch._dynamo (about a second of a server's start)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, module = getattr(func, "__name__", ""), getattr(func, "__module__", None)
        if module == "torch.nn.init" or name in INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


INITIALISERS = frozenset({"normal_", "uniform_", "zero_", "fill_", "exponential_", "random_"})


def meta_model(config: GPTConfig) -> GPT:
    """The model's structure on the meta device (shapes and dtypes, no memory, no values), built without
    running any initialiser; `to_empty` then gives it real (uninitialised) storage."""
    with torch.device("meta"), _NoInitOnMeta():
        return GPT(config)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.rotary_seq_len = config.sequence_len * ROTARY_LENGTH_FACTOR
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self.reset_rotary()

    def reset_rotary(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the cos/sin buffers, shape (1, T, 1, head_dim/2), in fp32 then rounded to bf16.

        They are not in the state dict: a model built on the meta device or loaded with `to_empty` needs
        them computed again on its real device."""
        head_dim = self.config.head_dim
        if torch.empty(0, device=device).is_meta:  # shapes only: computing on meta imports torch._dynamo
            shape = (1, self.rotary_seq_len, 1, head_dim // 2)
            self.cos = torch.empty(shape, dtype=torch.bfloat16, device=device)
            self.sin = torch.empty(shape, dtype=torch.bfloat16, device=device)
            return
        channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (ROTARY_BASE ** (channels / head_dim))
        t = torch.arange(self.rotary_seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        self.cos = freqs.cos().bfloat16()[None, :, None, :]
        self.sin = freqs.sin().bfloat16()[None, :, None, :]

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """nanochat's initialisation: scaled normal linears, N(0, 1) embedding, zero output projections."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 1.0, generator=generator)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        self.reset_rotary(self.lm_head.weight.device)

    def fuse_qkv(self) -> bool:
        """Fuse every layer's q/k/v projection (`CausalSelfAttention.fuse_qkv`); True when all are."""
        return all([block.attn.fuse_qkv() for block in self.transformer.h])

    def decode(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor | Sequence[torch.Tensor],
        values: torch.Tensor | Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
        key_len: int | None = None,
        fused: bool = False,
    ) -> torch.Tensor:
        """The decode step: (batch, vocab) logits of one new token per row for rows 0..batch-1 of a cache's
        `keys`/`values` (n_layer, rows, n_kv_head, max_len, head_dim), or a sequence of each layer's,
        row b at `positions[b]`. Writes
        the tokens' keys and values; the caller advances the lengths. Each row attends to keys
        [0, key_len) where `mask` (batch, 1, 1, key_len, True: allowed) says; without a mask to all of
        them (rows at one position). A function of tensors only, so `torch.compile` can take it whole."""
        if mask is not None:
            key_len = mask.size(-1)
        cos = self.cos[0, positions].unsqueeze(1)
        sin = self.sin[0, positions].unsqueeze(1)
        x = rms_norm(self.transformer.wte(idx))
        for i, block in enumerate(self.transformer.h):
            attn = block.attn
            x = x + attn.decode(rms_norm(x), cos, sin, keys[i], values[i], positions, mask, key_len, fused)
            x = x + block.mlp(rms_norm(x))
        logits = self.lm_head(rms_norm(x))[:, -1]
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        *,
        start_row: int = 0,
        last_only: bool = False,
        loss_reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits (batch, time, vocab), or the cross-entropy loss when `targets` is given.

        With `kv_cache`, `idx` holds the next tokens of cache rows start_row .. start_row + batch - 1, each
        continuing at its own cached length; `last_only` computes logits for the last position only.
        """
        B, T = idx.size()
        plan = None
        if kv_cache is None:
            if self.rotary_seq_len < T:
                raise ValueError(
                    f"sequence of {T} tokens is longer than the rotary table {self.rotary_seq_len}"
                )
            cos, sin = self.cos[:, :T], self.sin[:, :T]
        else:
            plan = kv_cache.plan(start_row, B, T)
            if plan.key_len > self.rotary_seq_len:
                raise ValueError(f"position {plan.key_len} is past the rotary table {self.rotary_seq_len}")
            if plan.uniform:
                p = plan.positions[0]
                cos, sin = self.cos[:, p : p + T], self.sin[:, p : p + T]
            else:  # one token per row, each at its own position
                cos = self.cos[0, plan.position_index].unsqueeze(1)
                sin = self.sin[0, plan.position_index].unsqueeze(1)

        x = rms_norm(self.transformer.wte(idx))
        for block in self.transformer.h:
            x = block(x, cos, sin, kv_cache, plan)
        x = rms_norm(x)
        if plan is not None:
            kv_cache.advance(plan)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=-1,
            reduction=loss_reduction,
        )

    @torch.inference_mode()
    def generate(
        self,
        tokens: list[int],
        max_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
    ):
        """Reference sampler without a KV cache (nanochat's GPT.generate): yields one token id at a time.

        Slow by design (recomputes the whole sequence per token); the engine is the fast path. With top_k,
        logits below the k-th are masked before softmax over the full vocabulary.
        """
        device = self.transformer.wte.weight.device  # (an int8 lm_head has no .weight)
        generator = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            else:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat((ids, next_id), dim=1)
            yield int(next_id.item())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
