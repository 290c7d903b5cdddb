"""transformers' `StaticCache` with one row per sequence, each row written at its own position.

`HFEngine` keeps every sequence it serves in one row of this cache: keys and values preallocated once
(`rows` x `max_len` tokens per layer, the library's `StaticLayer` tensors), each row with its own length, so
one batched forward decodes rows that joined at different times and sit at different positions, and nothing
is copied per step. The library's own `StaticLayer.update` writes every row of a batch at one shared
position (it serves `generate`, where all rows advance together); `update` here writes row b at
`lengths[b]` instead, and returns views of the rows' keys and values up to the longest. Before each
forward the engine calls `plan`, which gives the position ids and the attention mask (key j is visible to a
token at position p when j <= p; keys of a row's earlier occupant, past its length, are never visible);
after it, `advance`.

Rows are plain indices, as in `nanochat.kv_cache.KVCache`: the engine decides which sequence lives in which
row and moves a row (`copy_row`, once, when a sequence leaves or a generation's n continuations start), not
the model. Only full-attention layers: a model with sliding-window, chunked or recurrent layers is refused.
This module imports transformers; `nanochat.hf_engine` imports it only when it builds an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from nanochat.backend import EngineError
from nanochat.kv_cache import check_rows


@dataclass(frozen=True)
class RowPlan:
    """Where one forward over rows [start_row, start_row + batch), `num_tokens` each, reads and writes."""

    start_row: int
    batch: int
    num_tokens: int
    key_len: int  # keys attended to: the longest row's length after this forward
    uniform: bool  # every row starts at the same position
    positions: torch.Tensor  # (batch,) each row's length before this forward
    position_ids: torch.Tensor  # (batch, num_tokens)
    attention_mask: torch.Tensor  # (batch, 1, num_tokens, key_len): bool (True: visible), or additive


class RowStaticCache(StaticCache):
    """`rows` sequences of at most `max_len` tokens; see the module docstring."""

    def __init__(
        self, config, rows: int, max_len: int, dtype: torch.dtype, device: torch.device, additive_mask: bool
    ) -> None:
        super().__init__(config=config, max_cache_len=max_len)
        if any(type(layer) is not StaticLayer for layer in self.layers):
            kinds = sorted({type(layer).__name__ for layer in self.layers})
            raise EngineError(
                f"only full-attention models can be served; this one's cache layers are {', '.join(kinds)}"
            )
        text = config.get_text_config(decoder=True)
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        self.early_initialization(rows, kv_heads, head_dim, dtype, device)
        self.rows, self.max_len, self.device = rows, max_len, device
        self.additive_mask = additive_mask  # eager attention adds the mask; sdpa takes a bool one
        self.lengths = [0] * rows
        self._plan: RowPlan | None = None

    @property
    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def plan(self, start_row: int, batch: int, num_tokens: int) -> RowPlan:
        """Describe (and arm `update` for) a forward of `num_tokens` new tokens in each of `batch` rows."""
        lengths, key_len, uniform = check_rows(self.lengths, start_row, batch, num_tokens, self.max_len)
        positions = torch.tensor(lengths, dtype=torch.long, device=self.device)
        position_ids = positions[:, None] + torch.arange(num_tokens, device=self.device)
        keys = torch.arange(key_len, device=self.device)
        mask = (keys[None, None, :] <= position_ids[:, :, None]).unsqueeze(1)
        if self.additive_mask:
            dtype = self.layers[0].keys.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill_(
                ~mask, torch.finfo(dtype).min
            )
        self._plan = RowPlan(start_row, batch, num_tokens, key_len, uniform, positions, position_ids, mask)
        return self._plan

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (batch, kv_heads, num_tokens, head_dim) keys and values in the planned rows, each at its own
        length; return the rows' keys and values up to the plan's key_len (views, no copy)."""
        plan, layer = self._plan, self.layers[layer_idx]
        if plan is None:
            raise RuntimeError("RowStaticCache.plan must be called before a forward")
        rows = slice(plan.start_row, plan.start_row + plan.batch)
        if plan.uniform:
            start = self.lengths[plan.start_row]
            layer.keys[rows, :, start : start + plan.num_tokens] = key_states
            layer.values[rows, :, start : start + plan.num_tokens] = value_states
        else:
            row_index = torch.arange(plan.start_row, plan.start_row + plan.batch, device=self.device)
            layer.keys[row_index, :, plan.positions] = key_states[:, :, 0]
            layer.values[row_index, :, plan.positions] = value_states[:, :, 0]
        return layer.keys[rows, :, : plan.key_len], layer.values[rows, :, : plan.key_len]

    def advance(self) -> None:
        """The planned forward ran: its rows are `num_tokens` longer."""
        plan, self._plan = self._plan, None
        for row in range(plan.start_row, plan.start_row + plan.batch):
            self.lengths[row] += plan.num_tokens

    def copy_row(self, src: int, dst: int) -> None:
        """Make row `dst` a copy of row `src` (keys, values and length)."""
        n = self.lengths[src]
        for layer in self.layers:
            layer.keys[dst, :, :n] = layer.keys[src, :, :n]
            layer.values[dst, :, :n] = layer.values[src, :, :n]
        self.lengths[dst] = n

    def reset_row(self, row: int) -> None:
        self.lengths[row] = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The longest row's length (what transformers asks a cache when it is not given positions)."""
        return max(self.lengths)
