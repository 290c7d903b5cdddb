"""Prefix caching: the keys and values of token sequences already seen, kept in fixed-size blocks so that a
later prompt starting with the same tokens (a system prompt, the earlier turns of a conversation) skips
their prefill.

A block holds `block_size` consecutive positions of every layer's keys and values. It is named by a hash
chain: the digest of the previous block's name and this block's tokens, so a block is found only after
exactly the same preceding tokens (keys and values depend on every earlier token). A lookup walks a
prompt's blocks from the start and stops at the first one not held; the block's own tokens are compared
too, so a hash collision can never serve another sequence's keys.

The blocks live in one pool allocated when the cache is made: `max_bytes // block_bytes` slots laid out
like a cache row (n_layer, n_kv_head, slots * block_size, head_dim), so a run of blocks in
consecutive slots moves to or from a row in one slice copy, and keeping or reusing a prompt allocates
nothing. Slots are handed out in order, so the blocks of one sequence usually sit side by side. When every
slot is taken the least recently used block is evicted, never one of the sequence being stored. A lookup
marks the blocks it walks as used from the last to the first, so a chain's tail is evicted before its head
(a head evicted first would leave its tail unreachable).

This module knows nothing about models, rows or sampling: the engine (`nanochat.engine.Engine`) `load`s
the start of a prompt into its prefill row and `store`s rows it has computed. When that row still holds the
sequence it last served (`nanochat.batching.BatchedEngine` knows), `load` is told how many leading tokens
are already in place: a conversation's next turn then copies nothing and reuses every token it can.
"""

from __future__ import annotations

import array
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

DEFAULT_BLOCK_SIZE = 16
DIGEST_BYTES = 16


@dataclass(frozen=True)
class PrefixCacheStats:
    """A snapshot: what the cache holds and what it has done since it was made (counters only grow)."""

    block_size: int
    max_bytes: int
    blocks: int
    bytes: int
    hits: int  # lookups that reused at least one token (from blocks, or still in the prefill row)
    misses: int  # lookups that reused none
    reused_tokens: int  # prompt tokens whose prefill was skipped
    evicted_blocks: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Held(NamedTuple):
    tokens: tuple[int, ...]
    slot: int  # positions [slot * block_size, (slot + 1) * block_size) of the pool


def block_names(tokens: list[int], block_size: int, count: int) -> list[bytes]:
    """The hash-chain names of the first `count` full blocks of `tokens`."""
    names, previous = [], b""
    for i in range(count):
        chunk = tokens[i * block_size : (i + 1) * block_size]
        digest = hashlib.blake2b(previous, digest_size=DIGEST_BYTES)
        digest.update(array.array("q", chunk).tobytes())
        previous = digest.digest()
        names.append(previous)
    return names


def resolve_budget(size: int | float, pool_bytes: int) -> int:
    """The cache's bytes from a setting: a float is a fraction of the row pool's bytes (`pool_bytes`), an
    int a number of bytes."""
    if isinstance(size, float):
        return int(size * pool_bytes)
    return int(size)


def runs(pairs: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(block, slot) pairs in block order as (first block, first slot, count) runs in which both go up by
    one: each run is one slice copy."""
    start = 0
    for i in range(1, len(pairs) + 1):
        if i == len(pairs) or pairs[i] != (pairs[i - 1][0] + 1, pairs[i - 1][1] + 1):
            yield pairs[start][0], pairs[start][1], i - start
            start = i


class PrefixCache:
    """Blocks of keys and values by hash-chain name in a preallocated pool, least recently used first;
    see the module docstring."""

    def __init__(
        self,
        max_bytes: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        n_layer: int,
        n_kv_head: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if block_size < 1:
            raise ValueError(f"the prefix cache's block size must be at least 1, got {block_size}")
        if max_bytes < 0:
            raise ValueError(f"the prefix cache's size must not be negative, got {max_bytes}")
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.block_bytes = 2 * n_layer * n_kv_head * block_size * head_dim * dtype.itemsize
        self.slots = max_bytes // self.block_bytes
        shape = (n_layer, n_kv_head, self.slots * block_size, head_dim)
        # empty, not zeros: a slot is always written before it is read, and untouched memory costs no
        # start-up time and (on CPU) no resident memory until blocks are stored in it
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self._blocks: OrderedDict[bytes, Held] = OrderedDict()  # least recently used first
        self._free = list(range(self.slots - 1, -1, -1))  # popped from the end: slot 0 first
        self.hits = self.misses = self.reused_tokens = self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def bytes(self) -> int:
        """What the blocks held take (the pool itself is `slots * block_bytes`, allocated up front)."""
        return len(self._blocks) * self.block_bytes

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            self.block_size,
            self.max_bytes,
            len(self._blocks),
            self.bytes,
            self.hits,
            self.misses,
            self.reused_tokens,
            self.evicted_blocks,
        )

    def match(self, prompt: list[int]) -> list[int]:
        """The slots of the blocks that start `prompt`, in order, leaving at least its last token to
        prefill (its logits are the ones sampled from). Counts a hit or a miss."""
        slots = self._lookup(prompt)
        self._count(len(slots) * self.block_size)
        return slots

    def load(self, prompt: list[int], k: torch.Tensor, v: torch.Tensor, in_place: int = 0) -> int:
        """Copy the blocks that start `prompt` (`match`) into k and v (n_layer, n_kv_head, >= len(prompt),
        head_dim; a cache row's) from position 0; returns the tokens reused, at most all but the last.

        `in_place`: leading tokens of `prompt` whose keys and values k and v already hold (the row held them
        last): blocks within them are not copied, and reuse may go past the last block held, to the token."""
        size = self.block_size
        in_place = min(in_place, len(prompt) - 1)
        slots = self._lookup(prompt)
        missing = [(block, slot) for block, slot in enumerate(slots) if (block + 1) * size > in_place]
        for block, slot, count in runs(missing):
            k[:, :, block * size : (block + count) * size] = self.k[:, :, slot * size : (slot + count) * size]
            v[:, :, block * size : (block + count) * size] = self.v[:, :, slot * size : (slot + count) * size]
        reused = max(len(slots) * size, in_place)
        self._count(reused)
        return reused

    def _lookup(self, prompt: list[int]) -> list[int]:
        """The slots of the blocks that start `prompt` but not its last token; marks them used."""
        usable = (len(prompt) - 1) // self.block_size
        found: list[tuple[bytes, int]] = []
        size = self.block_size
        for i, name in enumerate(block_names(prompt, size, usable)):
            held = self._blocks.get(name)
            if held is None or held.tokens != tuple(prompt[i * size : (i + 1) * size]):
                break
            found.append((name, held.slot))
        for name, _ in reversed(found):  # the head ends most recent: tails are evicted first
            self._blocks.move_to_end(name)
        return [slot for _, slot in found]

    def _count(self, reused: int) -> None:
        if reused:
            self.hits += 1
            self.reused_tokens += reused
        else:
            self.misses += 1

    def store(self, tokens: list[int], k: torch.Tensor, v: torch.Tensor) -> int:
        """Keep the full blocks of `tokens`, whose keys and values are k and v (n_layer, n_kv_head, >=
        len(tokens), head_dim; a cache row's, read lazily: only the blocks not held yet are copied).
        Returns the blocks added; evicts the least recently used blocks of other sequences when the pool
        is full, and keeps as many of the first blocks as fit."""
        size = self.block_size
        names = block_names(tokens, size, len(tokens) // size)
        chain = set(names)
        kept, copies = 0, []  # the blocks now held from the start; (block, slot) to copy
        for i, name in enumerate(names):
            if name not in self._blocks:
                slot = self._free_slot(chain)
                if slot is None:
                    break
                self._blocks[name] = Held(tuple(tokens[i * size : (i + 1) * size]), slot)
                copies.append((i, slot))
            kept = i + 1
        for name in reversed(names[:kept]):  # as in `match`: the head ends most recent
            self._blocks.move_to_end(name)
        for block, slot, count in runs(copies):
            self.k[:, :, slot * size : (slot + count) * size] = k[:, :, block * size : (block + count) * size]
            self.v[:, :, slot * size : (slot + count) * size] = v[:, :, block * size : (block + count) * size]
        return len(copies)

    def _free_slot(self, keep: set[bytes]) -> int | None:
        """A free slot, evicting the least recently used block not in `keep` if none is; None if only
        blocks of `keep` are held."""
        if self._free:
            return self._free.pop()
        for name in self._blocks:  # least recently used first
            if name not in keep:
                slot = self._blocks.pop(name).slot
                self.evicted_blocks += 1
                return slot
        return None

    def clear(self) -> None:
        self._blocks.clear()
        self._free = list(range(self.slots - 1, -1, -1))
