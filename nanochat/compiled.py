"""The decode step compiled with `torch.compile`, one graph per batch-size bucket.

`GPT.decode` is a function of tensors only (tokens, positions, the cache's keys and values, a mask), so
the whole step compiles into one graph: inductor fuses the norms, the rotary and the residual adds, and a
step costs one call instead of ~60 small torch calls per layer stack. Shapes are fixed (`dynamic=False`)
except the keys' length, marked dynamic, which grows by one every step: a batch of B rows runs in the
smallest bucket >= B (1, 2, 4, ... up to the engine's batch), its extra rows riding along and thrown away.

Everything is compiled in `warm_up`, before the engine serves anyone; a compilation that fails there, or a
step that fails later, logs one line and the engine goes on eagerly (`failed` says why). This module
knows nothing about sampling or rows' lifecycles: `nanochat.engine.Engine` calls it with the tokens.
"""

from __future__ import annotations

import logging

import torch

from nanochat.gpt import GPT
from nanochat.kv_cache import KVCache

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch` itself: every batch pads up by less than 2x."""
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return (*buckets, max_batch)


class CompiledDecode:
    """`model.decode` compiled for each bucket of `buckets`; see the module docstring."""

    def __init__(self, model: GPT, cache: KVCache, buckets: tuple[int, ...], fused: bool) -> None:
        if max(buckets) > cache.capacity:
            raise ValueError(f"bucket {max(buckets)} is more than the cache's {cache.capacity} rows")
        self.model = model
        self.cache = cache
        self.buckets = tuple(sorted(buckets))
        self.fused = fused
        self.failed: str | None = None
        # one cache entry per bucket on the same code object: more than dynamo's default limit allows
        limit = len(self.buckets) + 2
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        self._step = torch.compile(model.decode, dynamic=False, fullgraph=True)
        # each layer's keys as an input of its own: writing into slices of the one 5-d tensor makes the
        # compiled graph rebuild the whole tensor after every layer's write (measured: ~50x slower)
        self._keys, self._values = cache.k.unbind(0), cache.v.unbind(0)

    def bucket(self, batch: int) -> int:
        return next(b for b in self.buckets if b >= batch)

    @torch.inference_mode()
    def warm_up(self) -> bool:
        """Compile every bucket now (rows 0.. of an empty cache are written at position 0, and stay
        empty); False, and eager from then on, if compilation fails."""
        if any(self.cache.lengths):
            raise RuntimeError("compile the decode step before the cache holds anything")
        try:
            for bucket in self.buckets:
                self._run(bucket, bucket, torch.zeros(bucket, dtype=torch.long), warm=True)
        except Exception as e:  # anything inductor, a compiler or dynamo raises: eager still works
            self._fail(e)
        return self.failed is None

    def __call__(self, tokens: list[int]) -> torch.Tensor | None:
        """(len(tokens), vocab) logits of rows 0..len-1's next token, or None once compilation failed (the
        caller runs the eager step; nothing was advanced)."""
        if self.failed is not None:
            return None
        batch = len(tokens)
        bucket = self.bucket(batch)
        ids = torch.tensor(tokens + [0] * (bucket - batch), dtype=torch.long)
        try:
            logits = self._run(batch, bucket, ids)
        except Exception as e:
            self._fail(e)
            return None
        return logits[:batch]

    def _run(self, batch: int, bucket: int, ids: torch.Tensor, warm: bool = False) -> torch.Tensor:
        cache = self.cache
        if warm:  # keys of length 2 (a shape of 1 would be specialised), marked dynamic
            positions = torch.zeros(bucket, dtype=torch.long, device=cache.device)
            mask = torch.ones(bucket, 1, 1, 2, dtype=torch.bool, device=cache.device)
            torch._dynamo.mark_dynamic(mask, 3)
        else:
            positions, mask, _ = cache.decode_plan(batch, pad_to=bucket)
        idx = ids.to(cache.device).view(bucket, 1)
        return self._step(idx, positions, self._keys, self._values, mask, None, self.fused)

    def _fail(self, error: Exception) -> None:
        self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
        logger.warning("torch.compile of the decode step failed, decoding eagerly: %s", self.failed)
