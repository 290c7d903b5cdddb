"""The nanochat inference engine: KV-cached generation over many independent sequences at once.

A `Generation` is one prompt and its `n` continuations. The engine prefills it (in chunks, so a long
prompt can be interleaved with decoding), samples each continuation's first token, then gives it a row of
the KV cache. `decode_step` runs one batched forward over every decoding row, whatever its length, and
samples each generation with its own parameters and random generators. Generations join and leave between
steps; a generation's tokens do not depend on what else is in the batch. The lifecycle, sampling and stop
rules are `nanochat.batching.BatchedEngine`'s (shared with the Hugging Face engine); this module holds what
is nanochat's own: the model's forwards over the static KV cache, and the calculator tool.

Tool: tokens between <|python_start|> and <|python_end|> are evaluated (safely, by `calculator.evaluate`)
and the result is forced into the stream as <|output_start|> result <|output_end|>.

Rows [0, num_decoding) of the cache hold decoding sequences, contiguously: when a generation leaves, the
last rows move into the holes. The generation being prefilled (one at a time) sits in the row just after
them.

The cache is allocated once, for `max_batch` + 1 rows of the context (`max_seq_len`, at most the model's
`sequence_len`); `memory_plan` says what the weights and that cache take from the model's config alone,
before either is allocated (`engine.memory` is the same figures from the real tensors).

With `prefix_cache_bytes`, the keys and values of prompts (at the end of their prefill) and of whole
sequences (when their rows are freed) are kept in a `nanochat.prefix_cache.PrefixCache` of that size (its
pool allocated here, once), and a new prompt that starts with blocks of it has them copied into its prefill
row: only the rest is prefilled.

A decode step is `GPT.decode` over rows [0, num_decoding) (q/k/v fused at construction, the mask made in one
comparison by `KVCache.decode_plan`); with `compile=True` it runs compiled per batch bucket
(`nanochat.compiled`), compiled in the constructor, eager if compilation fails.

The engine runs on one thread and knows nothing about HTTP; `generate` is nanochat's simple interface.
"""

from __future__ import annotations

import torch

from nanochat.backend import (
    MAX_TOP_K,
    CapacityError,
    Continuation,
    EngineError,
    Generation,
    SamplingParams,
    TokenEvent,
)
from nanochat.batching import BatchedEngine
from nanochat.calculator import evaluate as calculator_evaluate
from nanochat.compiled import CompiledDecode, batch_buckets
from nanochat.constrain import Grammars
from nanochat.detokenize import TextStream
from nanochat.gpt import GPT, GPTConfig, meta_model
from nanochat.kv_cache import KVCache, cache_bytes
from nanochat.memory import MemoryPlan, context_tokens, module_bytes
from nanochat.prefix_cache import DEFAULT_BLOCK_SIZE, PrefixCache, PrefixCacheStats, resolve_budget
from nanochat.quantize import planned_weights_bytes, quantization_of
from nanochat.tokenizer import Tokenizer

# The contract's names, for the callers that drive this engine directly (the CLI, evaluation, benchmarks).
__all__ = [
    "MAX_TOP_K",
    "CapacityError",
    "Continuation",
    "Engine",
    "EngineError",
    "Generation",
    "SamplingParams",
    "TokenEvent",
    "memory_plan",
]


def cache_layout(config: GPTConfig, max_batch: int, context: int) -> tuple[int, int, int, int, int]:
    """The engine's `KVCache` arguments (n_layer, n_kv_head, head_dim, rows, max_len): one row per sequence
    decoding, and one more for the generation being prefilled."""
    return (config.n_layer, config.n_kv_head, config.head_dim, max_batch + 1, context)


def memory_plan(
    config: GPTConfig, dtype: torch.dtype, max_batch: int, max_seq_len: int | None, quantization: str = "none"
) -> MemoryPlan:
    """What an `Engine` over a model of `config` in `dtype` (its linears in int8 with quantization "int8")
    will take, computed before anything is allocated (the model is built on the meta device).
    ContextLengthError for a max_seq_len above the model's."""
    context = context_tokens(max_seq_len, config.sequence_len)
    weights = planned_weights_bytes(meta_model(config), dtype, quantization)
    layout = cache_layout(config, max_batch, context)
    cache = cache_bytes(*layout, dtype)
    return MemoryPlan(weights, dtype, cache, rows=layout[3], context=context, quantization=quantization)


class Engine(BatchedEngine):
    """Generation with a row-pooled KV cache; see the module docstring."""

    tokenizer: Tokenizer

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_batch: int = 16,
        max_seq_len: int | None = None,
        prefill_chunk: int = 512,
        prefix_cache_bytes: int | float = 0,
        prefix_block_size: int = DEFAULT_BLOCK_SIZE,
        compile: bool = False,
    ) -> None:
        """`prefix_cache_bytes`: the most the prefix cache may take, in bytes or as a fraction of the KV
        cache's (0: no prefix caching); `prefix_block_size`: the tokens of one of its blocks. `compile`:
        compile the decode step now, one graph per batch bucket (`nanochat.compiled`; minutes on a small
        CPU), eager if that fails."""
        config = model.config
        param = next(model.parameters())
        special = tokenizer.get_special_tokens()
        super().__init__(
            max_batch=max_batch,
            max_seq_len=context_tokens(max_seq_len, config.sequence_len),
            prefill_chunk=prefill_chunk,
            device=param.device,
            vocab_size=config.vocab_size,
            eos_token_ids=frozenset({special["<|assistant_end|>"], tokenizer.get_bos_token_id()}),
        )
        self.model = model.eval()
        self._fused = model.fuse_qkv()  # one q/k/v matmul per layer; the parameters stay as they were
        self.tokenizer = tokenizer
        self.cache = KVCache(
            *cache_layout(config, max_batch, self.max_seq_len), dtype=param.dtype, device=self.device
        )
        self.memory = MemoryPlan(
            module_bytes(model),
            param.dtype,
            self.cache.nbytes,
            self.cache.capacity,
            self.max_seq_len,
            quantization=quantization_of(model),
        )
        self.prefix_cache = None
        if prefix_cache_bytes:
            self.prefix_cache = PrefixCache(
                resolve_budget(prefix_cache_bytes, self.cache.nbytes),
                prefix_block_size,
                n_layer=config.n_layer,
                n_kv_head=config.n_kv_head,
                head_dim=config.head_dim,
                dtype=param.dtype,
                device=self.device,
            )
        self._special_ids = frozenset(special.values())
        self._python_start = special["<|python_start|>"]
        self._python_end = special["<|python_end|>"]
        self._output_start = special["<|output_start|>"]
        self._output_end = special["<|output_end|>"]
        self.compiled: CompiledDecode | None = None
        if compile:
            self.compiled = CompiledDecode(model, self.cache, batch_buckets(max_batch), self._fused)
            self.compiled.warm_up()

    # ---- the model over the KV cache (BatchedEngine's hooks) ------------------------------------------
    def _text_stream(self, params: SamplingParams) -> TextStream:
        return TextStream(self.tokenizer.id_to_token_bytes, self._special_ids, params.stop)

    def _reset_prefill(self) -> None:
        self.cache.reset_row(self._prefill_row)

    def _forward_prefill(self, ids: list[int], start: int, every: bool = False) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(idx, kv_cache=self.cache, start_row=self._prefill_row, last_only=not every)
        return logits[0] if every else logits[:, -1, :]

    def _take_prefill(self, generation: Generation) -> None:
        prefill_row = generation.continuations[0].row  # the prefill row is the first continuation's
        self._keep_prefix(prefill_row, generation.prompt_ids)
        for cont in generation.continuations[1:]:
            self.cache.copy_row(prefill_row, cont.row)

    def _forward_decode(self, rows: list[Continuation]) -> torch.Tensor:
        batch = len(rows)  # rows[i] is cache row i
        tokens = [c.last_token for c in rows]
        logits = self.compiled(tokens) if self.compiled is not None else None
        if logits is None:
            idx = torch.tensor(tokens, dtype=torch.long, device=self.device).view(batch, 1)
            positions, mask, key_len = self.cache.decode_plan(batch)
            cache = self.cache
            logits = self.model.decode(idx, positions, cache.k, cache.v, mask, key_len, self._fused)
        self.cache.advance_rows(batch)
        return logits

    def _row_length(self, cont: Continuation) -> int:
        return self.cache.lengths[cont.row]

    def _copy_row(self, src: int, dst: int) -> None:
        self.cache.copy_row(src, dst)

    def _before_release(self, generation: Generation) -> None:
        for cont in generation.continuations:  # before any row moves
            self._keep_prefix(cont.row, generation.prompt_ids + cont.tokens)

    def _forget_rows(self) -> None:
        for row in range(self.cache.capacity):
            self.cache.reset_row(row)

    # ---- the prefix cache -----------------------------------------------------------------------------
    def prefix_cache_stats(self) -> PrefixCacheStats | None:
        return None if self.prefix_cache is None else self.prefix_cache.stats()

    @torch.inference_mode()
    def _reuse_prefix(self, generation: Generation, in_place: int) -> int:
        if self.prefix_cache is None:
            return 0
        row, prompt = self._prefill_row, generation.prompt_ids
        reused = self.prefix_cache.load(prompt, self.cache.k[:, row], self.cache.v[:, row], in_place)
        self.cache.lengths[row] = reused
        return reused

    def _keep_prefix(self, row: int, tokens: list[int]) -> None:
        """Offer a row's keys/values to the prefix cache; `tokens` starts with those in the row."""
        if self.prefix_cache is not None:
            length = self.cache.lengths[row]
            self.prefix_cache.store(tokens[:length], self.cache.k[:, row], self.cache.v[:, row])

    def _make_grammars(self) -> Grammars:
        eos = self.tokenizer.encode_special("<|assistant_end|>")
        return Grammars.for_tiktoken(self.tokenizer.encoding, self.vocab_size, eos)

    # ---- the calculator tool --------------------------------------------------------------------------
    def _on_token(self, cont: Continuation, token: int) -> None:
        if not cont.generation.params.tools:
            return
        if token == self._python_start:
            cont.in_python, cont.python_ids = True, []
        elif token == self._python_end and cont.in_python:
            cont.in_python = False
            if cont.python_ids:
                result = calculator_evaluate(self.tokenizer.decode(cont.python_ids))
                if result is not None:
                    cont.forced.append(self._output_start)
                    cont.forced.extend(self.tokenizer.encode(result))
                    cont.forced.append(self._output_end)
        elif cont.in_python:
            cont.python_ids.append(token)
