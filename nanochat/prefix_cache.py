"""Prefix caching: the keys and values of token sequences already seen, kept in fixed-size blocks so that a
later prompt starting with the same tokens (a system prompt, the earlier turns of a conversation) skips
their prefill.

A block holds `block_size` consecutive positions of every layer's keys and values. It is named by a hash
chain: the digest of the previous block's name and this block's tokens, so a block is found only after
exactly the same preceding tokens (keys and values depend on every earlier token). A lookup walks a
prompt's blocks from the start and stops at the first one not held; the block's own tokens are compared
too, so a hash collision can never serve another sequence's keys.

Blocks live outside the engine's row pool, in `max_bytes` at most; past it the least recently used go
first. A lookup marks the blocks it walks as used from the last to the first, so a chain's tail is evicted
before its head (a head evicted first would leave its tail unreachable).

This module knows nothing about models, rows or sampling: the engine (`nanochat.engine.Engine`) copies
`match` results into a prefill row and `store`s rows it has computed.
"""

from __future__ import annotations

import array
import hashlib
from collections import OrderedDict
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
    hits: int  # lookups that reused at least one block
    misses: int  # lookups that reused none
    reused_tokens: int  # prompt tokens whose prefill was skipped
    evicted_blocks: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Block(NamedTuple):
    tokens: tuple[int, ...]
    k: torch.Tensor  # (n_layer, n_kv_head, block_size, head_dim)
    v: torch.Tensor


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


class PrefixCache:
    """Blocks of keys and values by hash-chain name, least recently used first; see the module docstring."""

    def __init__(self, max_bytes: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size < 1:
            raise ValueError(f"the prefix cache's block size must be at least 1, got {block_size}")
        if max_bytes < 0:
            raise ValueError(f"the prefix cache's size must not be negative, got {max_bytes}")
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()  # least recently used first
        self.hits = self.misses = self.reused_tokens = self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

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

    def match(self, prompt: list[int]) -> list[Block]:
        """The blocks that start `prompt`, in order, leaving at least its last token to prefill (its logits
        are the ones sampled from). Counts a hit or a miss."""
        usable = (len(prompt) - 1) // self.block_size
        found: list[tuple[bytes, Block]] = []
        size = self.block_size
        for i, name in enumerate(block_names(prompt, size, usable)):
            block = self._blocks.get(name)
            if block is None or block.tokens != tuple(prompt[i * size : (i + 1) * size]):
                break
            found.append((name, block))
        for name, _ in reversed(found):  # the head ends most recent: tails are evicted first
            self._blocks.move_to_end(name)
        if found:
            self.hits += 1
            self.reused_tokens += len(found) * self.block_size
        else:
            self.misses += 1
        return [block for _, block in found]

    def store(self, tokens: list[int], k: torch.Tensor, v: torch.Tensor) -> int:
        """Keep the full blocks of `tokens`, whose keys and values are k and v (n_layer, n_kv_head, >=
        len(tokens), head_dim; a cache row's, read lazily: only the blocks not held yet are copied).
        Returns the blocks added; evicts the least recently used past `max_bytes`."""
        count = len(tokens) // self.block_size
        names = block_names(tokens, self.block_size, count)
        added = 0
        for i in reversed(range(count)):  # as in `match`: the head ends most recent
            name = names[i]
            if name in self._blocks:
                self._blocks.move_to_end(name)
                continue
            start, end = i * self.block_size, (i + 1) * self.block_size
            size = 2 * k[:, :, start:end].numel() * k.element_size()
            if size > self.max_bytes:
                return added
            self._evict(self.max_bytes - size)
            block = Block(tuple(tokens[start:end]), k[:, :, start:end].clone(), v[:, :, start:end].clone())
            self._blocks[name] = block
            self.bytes += size
            added += 1
        return added

    def _evict(self, keep_bytes: int) -> None:
        while self.bytes > keep_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes -= block.k.nbytes + block.v.nbytes
            self.evicted_blocks += 1

    def clear(self) -> None:
        self._blocks.clear()
        self.bytes = 0
