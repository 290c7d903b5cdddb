"""A key/value cache for many independent sequences, one row each.

Each row holds one sequence's keys and values and its own length, so rows can sit at different positions
and a single batched forward can decode all of them at once. Rows are plain indices: the engine decides
which sequence lives in which row, and moves rows (`copy_row`) to keep the active ones contiguous.

This module knows nothing about tokens, sampling or the model's weights; `gpt.py` calls `plan` once per
forward, `write` once per layer and `advance` at the end. The decode step (one token on each of rows
0..batch-1) takes `decode_plan` instead: positions and a mask made in one comparison, with no plan object,
so that a compiled step sees tensors only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionPlan:
    """Where one cached forward over rows [start_row, start_row + batch) reads and writes.

    `positions[b]` is the cache length of row b before this forward, so the forward's tokens go to
    positions[b] .. positions[b] + num_tokens - 1. `mask` is None when plain causal attention (or no mask
    at all) is exact; otherwise a boolean (batch, 1, num_tokens, key_len) mask, True where attention is
    allowed.
    """

    start_row: int
    batch: int
    num_tokens: int
    positions: tuple[int, ...]
    key_len: int
    uniform: bool  # all rows start at the same position
    is_causal: bool
    mask: torch.Tensor | None
    position_index: torch.Tensor  # (batch,) long, on the cache device


def cache_shape(n_layer: int, n_kv_head: int, head_dim: int, capacity: int, max_len: int) -> tuple[int, ...]:
    """The shape of the keys (and of the values) of a `KVCache` built with these arguments."""
    return (n_layer, capacity, n_kv_head, max_len, head_dim)


def cache_bytes(
    n_layer: int, n_kv_head: int, head_dim: int, capacity: int, max_len: int, dtype: torch.dtype
) -> int:
    """What a `KVCache` built with these arguments allocates (keys and values), before it is built."""
    return 2 * math.prod(cache_shape(n_layer, n_kv_head, head_dim, capacity, max_len)) * dtype.itemsize


def check_rows(
    lengths: list[int], start_row: int, batch: int, num_tokens: int, max_len: int
) -> tuple[tuple[int, ...], int, bool]:
    """For a forward of `num_tokens` new tokens in rows start_row..start_row+batch-1 of a cache whose rows
    hold `lengths` tokens (at most `max_len`): the rows' positions, the key length after it and whether the
    rows sit at one position. ValueError for rows outside the cache, a row past `max_len`, or several tokens
    for rows at different positions. Both nanochat's cache and the HF backend's (nanochat/hf_cache.py) plan
    with it."""
    if start_row < 0 or start_row + batch > len(lengths):
        raise ValueError(f"rows {start_row}..{start_row + batch - 1} are outside a cache of {len(lengths)}")
    positions = tuple(lengths[start_row : start_row + batch])
    key_len = max(positions) + num_tokens
    if key_len > max_len:
        raise ValueError(f"sequence would reach {key_len} tokens, past the cache length {max_len}")
    uniform = min(positions) == max(positions)
    if not uniform and num_tokens != 1:
        raise ValueError("rows at different positions can only decode one token at a time")
    return positions, key_len, uniform


class KVCache:
    """Preallocated keys and values: (n_layer, capacity, n_kv_head, max_len, head_dim) each."""

    def __init__(
        self,
        n_layer: int,
        n_kv_head: int,
        head_dim: int,
        capacity: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1 or max_len < 1:
            raise ValueError(f"KV cache needs capacity >= 1 and max_len >= 1, got {capacity} and {max_len}")
        shape = cache_shape(n_layer, n_kv_head, head_dim, capacity, max_len)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.max_len = max_len
        self.lengths = [0] * capacity
        self._arange = torch.arange(max(capacity, max_len), device=device)  # row and key indices, made once

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def nbytes(self) -> int:
        """What the keys and values take."""
        return self.k.nbytes + self.v.nbytes

    def plan(self, start_row: int, batch: int, num_tokens: int) -> AttentionPlan:
        """Describe a forward of `num_tokens` new tokens for each of `batch` rows starting at `start_row`."""
        positions, key_len, uniform = check_rows(self.lengths, start_row, batch, num_tokens, self.max_len)
        position_index = torch.tensor(positions, dtype=torch.long, device=self.device)
        is_causal = False
        mask = None
        if uniform:
            # Every row sees the same key range: a single new token attends to all of it, and a prompt
            # written at position 0 is plain causal attention. Only a chunk after a prefix needs a mask.
            if num_tokens > 1:
                if positions[0] == 0:
                    is_causal = True
                else:
                    mask = self._mask(position_index[:1], num_tokens, key_len)
        else:
            mask = self._mask(position_index, num_tokens, key_len)
        return AttentionPlan(
            start_row, batch, num_tokens, positions, key_len, uniform, is_causal, mask, position_index
        )

    def _mask(self, positions: torch.Tensor, num_tokens: int, key_len: int) -> torch.Tensor:
        queries = positions[:, None] + self._arange[None, :num_tokens]
        return (self._arange[None, None, :key_len] <= queries[:, :, None]).unsqueeze(1)

    def decode_plan(
        self, batch: int, pad_to: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """For one new token on each of rows 0..batch-1: their positions (batch,), the attention mask
        (batch, 1, 1, key_len), True where a row may attend, or None when every row is at one position,
        and key_len. Built in one comparison: nothing per row, nothing kept between steps.

        `pad_to`: as many rows as that (rows past `batch` ride along and are thrown away: a compiled step
        has a fixed batch), always with a mask. They write at their own length, the slot a prefill would
        write next, kept within the cache."""
        if batch < 1 or (pad_to or batch) > self.capacity:
            raise ValueError(f"rows 0..{(pad_to or batch) - 1} are outside a cache of {self.capacity}")
        lengths = self.lengths[:batch]
        key_len = max(lengths) + 1
        if key_len > self.max_len:
            raise ValueError(f"sequence would reach {key_len} tokens, past the cache length {self.max_len}")
        if pad_to is None and min(lengths) == max(lengths):
            return torch.tensor(lengths, device=self.device), None, key_len
        if pad_to is not None:
            lengths = lengths + [min(n, self.max_len - 1) for n in self.lengths[batch:pad_to]]
        positions = torch.tensor(lengths, device=self.device)
        mask = self._arange[:key_len] <= positions[:, None]
        return positions, mask[:, None, None, :], key_len

    def advance_rows(self, batch: int) -> None:
        """Rows 0..batch-1 took one token each (after a `decode_plan` step)."""
        for row in range(batch):
            self.lengths[row] += 1

    def write(
        self, layer: int, plan: AttentionPlan, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, n_kv_head, num_tokens, head_dim); return the keys and values to attend to."""
        rows = slice(plan.start_row, plan.start_row + plan.batch)
        if plan.uniform:
            p = plan.positions[0]
            self.k[layer, rows, :, p : p + plan.num_tokens] = k
            self.v[layer, rows, :, p : p + plan.num_tokens] = v
        else:
            row_index = self._arange[plan.start_row : plan.start_row + plan.batch]
            self.k[layer, row_index, :, plan.position_index] = k[:, :, 0]
            self.v[layer, row_index, :, plan.position_index] = v[:, :, 0]
        return self.k[layer, rows, :, : plan.key_len], self.v[layer, rows, :, : plan.key_len]

    def advance(self, plan: AttentionPlan) -> None:
        for b in range(plan.batch):
            self.lengths[plan.start_row + b] += plan.num_tokens

    def copy_row(self, src: int, dst: int) -> None:
        """Make row `dst` a copy of row `src` (keys, values and length)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def reset_row(self, row: int) -> None:
        self.lengths[row] = 0
