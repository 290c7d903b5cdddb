"""The compiled decode step (nanochat/compiled.py): the same greedy tokens as the eager step in fp32, for
batches that pad up to a bucket and shrink as generations finish; a compilation that fails logs one line
and the engine decodes eagerly. Each test compiles a tiny model for real (tens of seconds on 2 cores)."""

from __future__ import annotations

import logging

import pytest
import torch

from nanochat.backend import SamplingParams
from nanochat.compiled import batch_buckets
from nanochat.engine import Engine

pytestmark = pytest.mark.slow


def greedy_tokens(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    """Every prompt prefilled, then decoded together; generation i stops after 3 + 4·i tokens, so the
    batch shrinks 3 -> 2 -> 1 (buckets 4, 2, 1)."""
    generations = []
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=3 + 4 * i, temperature=0.0, ignore_eos=True, tools=False)
        generation = engine.begin(prompt, params)
        while generation.prefill_remaining:
            engine.prefill(generation)
        generations.append(generation)
    while engine.num_decoding:
        engine.decode_step()
    return [g.continuations[0].tokens for g in generations]


def test_buckets_cover_every_batch_within_twice_its_size():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(4) == (1, 2, 4)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)


def test_compiled_and_eager_decode_give_the_same_greedy_tokens(make_model, small_tokenizer):
    model = make_model(n_layer=1, n_head=2, n_kv_head=1, n_embd=32)
    prompts = [[(7 * i + j) % 300 + 1 for j in range(n)] for i, n in enumerate((5, 17, 11))]
    eager = greedy_tokens(Engine(model, small_tokenizer, max_batch=4, max_seq_len=48), prompts)
    engine = Engine(model, small_tokenizer, max_batch=4, max_seq_len=48, compile=True)
    assert engine.compiled is not None and engine.compiled.failed is None
    assert engine.compiled.buckets == (1, 2, 4)
    assert greedy_tokens(engine, prompts) == eager
    assert [len(t) for t in eager] == [3, 7, 11]
    assert engine.compiled.failed is None  # no step fell back to eager


def test_a_compilation_that_fails_logs_one_line_and_decodes_eagerly(make_model, small_tokenizer, caplog):
    model = make_model(n_layer=1, n_head=2, n_kv_head=1, n_embd=32)
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8]]
    eager = greedy_tokens(Engine(model, small_tokenizer, max_batch=2, max_seq_len=32), prompts)
    torch._dynamo.reset()  # nothing compiled earlier in this process may be reused
    no_compiler = {"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False, "autotune_local_cache": False}
    with torch._inductor.config.patch(no_compiler), caplog.at_level(logging.WARNING, "nanochat.compiled"):
        engine = Engine(model, small_tokenizer, max_batch=2, max_seq_len=32, compile=True)
    assert engine.compiled.failed
    lines = [r.getMessage() for r in caplog.records if r.name == "nanochat.compiled"]
    assert len(lines) == 1
    assert lines[0].startswith("torch.compile of the decode step failed, decoding eagerly: ")
    assert greedy_tokens(engine, prompts) == eager
