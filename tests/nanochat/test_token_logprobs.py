"""Token logprobs in the engine: the raw model distribution's log-softmax, only for the rows that ask."""

from __future__ import annotations

import pytest
import torch

from nanochat.backend import EngineError, SamplingParams
from nanochat.batching import token_logprobs
from nanochat.engine import Engine


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of one full forward over `ids`: row t is the distribution of token t + 1."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).float()[0], dim=-1)


def run(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[list]:
    """Begin every job (prefilled one after the other), then decode them in one batch to the end."""
    generations, events = [], []
    for prompt, params in jobs:
        generation = engine.begin(prompt, params)
        while generation.prefill_remaining:
            events += engine.prefill(generation)
        generations.append(generation)
    while not all(g.done for g in generations):
        events += engine.decode_step()
    return [[e for e in events if e.generation is g] for g in generations]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_logprobs_equal_a_forward_pass_and_only_rows_that_ask_get_them(
    make_model, small_tokenizer, temperature
):
    model = make_model()
    engine = Engine(model, small_tokenizer, max_batch=4)
    prompt = small_tokenizer.encode("the lazy dog", prepend=small_tokenizer.get_bos_token_id())
    asking = SamplingParams(max_tokens=12, temperature=temperature, seed=3, logprobs=5, ignore_eos=True)
    plain = SamplingParams(max_tokens=12, temperature=temperature, seed=4, ignore_eos=True)
    scored, unscored = run(engine, [(prompt, asking), (prompt[:2], plain)])
    assert all(e.logprob is None and e.top_logprobs == () for e in unscored)
    tokens = [e.token for e in scored]
    assert len(tokens) == 12
    expected = forward_logprobs(model, prompt + tokens)[len(prompt) - 1 : -1]
    for t, event in enumerate(scored):
        assert event.logprob == pytest.approx(expected[t, event.token].item(), abs=1e-4)
        assert len(event.top_logprobs) == 5
        values = [v for _, v in event.top_logprobs]
        assert values == sorted(values, reverse=True)
        top_ids = torch.topk(expected[t], 5).indices.tolist()
        assert [i for i, _ in event.top_logprobs] == top_ids
        for token, value in event.top_logprobs:
            assert value == pytest.approx(expected[t, token].item(), abs=1e-4)
        if temperature == 0.0:  # greedy: the chosen token is the likeliest
            assert event.top_logprobs[0][0] == event.token


def test_logprobs_zero_gives_the_chosen_token_only(make_model, small_tokenizer):
    engine = Engine(make_model(), small_tokenizer, max_batch=2)
    params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=0, n=2, ignore_eos=True)
    [events] = run(engine, [([1, 2, 3], params)])
    assert len(events) == 8
    assert all(isinstance(e.logprob, float) and e.logprob <= 0 and e.top_logprobs == () for e in events)


def test_token_logprobs_rows_with_different_tops():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    scored = token_logprobs(logits, [0, 0], [2, 0])
    expected = torch.log_softmax(logits, dim=-1)
    assert scored[0][0] == pytest.approx(expected[0, 0].item())
    assert [i for i, _ in scored[0][1]] == [2, 1]
    assert scored[1] == (pytest.approx(expected[1, 0].item()), ())


@pytest.mark.parametrize("bad", [-1, 21, 1.5])
def test_logprobs_out_of_range_is_refused(bad):
    with pytest.raises(EngineError, match="logprobs"):
        SamplingParams(logprobs=bad)


def test_hf_engine_logprobs_equal_a_transformers_forward():
    from nanochat.hf_engine import HFEngine
    from tests.nanochat.test_hf_export import demo_export

    engine = HFEngine.from_pretrained(demo_export(), max_batch=2)
    prompt = engine.tokenizer.encode("The LORD", prepend=engine.tokenizer.get_bos_token_id())
    params = SamplingParams(
        max_tokens=8, temperature=1.0, seed=5, logprobs=3, prompt_logprobs=1, ignore_eos=True
    )
    [events] = run(engine, [(prompt, params)])
    tokens = [e.token for e in events]
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
    every = torch.log_softmax(logits, dim=-1)
    expected = every[len(prompt) - 1 : -1]
    for t, event in enumerate(events):
        assert event.logprob == pytest.approx(expected[t, event.token].item(), abs=1e-4)
        assert [i for i, _ in event.top_logprobs] == torch.topk(expected[t], 3).indices.tolist()
    scored = events[0].generation.prompt_logprobs
    assert [lp for lp, _ in scored] == pytest.approx(
        [every[t, prompt[t + 1]].item() for t in range(len(prompt) - 1)], abs=1e-4
    )


def test_tokens_forced_by_the_calculator_get_their_logprob_under_the_model(small_tokenizer):
    from tests.nanochat.test_engine import chain, chain_model

    tok = small_tokenizer
    sp = tok.encode_special
    end = sp("<|assistant_end|>")
    ids, succ = chain(
        [sp("<|assistant_start|>")], [sp("<|python_start|>"), *tok.encode("2+3"), sp("<|python_end|>")]
    )
    succ[sp("<|output_end|>")] = end
    model = chain_model(tok.get_vocab_size(), succ, end)
    params = SamplingParams(max_tokens=30, temperature=0.0, logprobs=1)
    [events] = run(Engine(model, tok, max_batch=1), [(ids[:1], params)])
    forced = [e for e in events if e.forced]
    assert [e.token for e in forced] == [sp("<|output_start|>"), *tok.encode("5"), sp("<|output_end|>")]
    expected = forward_logprobs(model, ids[:1] + [e.token for e in events])[:-1]
    for t, event in enumerate(events):
        assert event.logprob == pytest.approx(expected[t, event.token].item(), abs=1e-4)
    assert all(e.logprob < e.top_logprobs[0][1] for e in forced)  # not what the model would have chosen


@pytest.mark.parametrize("chunk", [1, 2, 3, 64])
def test_prompt_logprobs_equal_a_forward_pass(make_model, small_tokenizer, chunk):
    model = make_model()
    engine = Engine(model, small_tokenizer, max_batch=2, prefill_chunk=chunk)
    prompt = small_tokenizer.encode("the lazy dog jumps over", prepend=small_tokenizer.get_bos_token_id())
    prompt = prompt if len(prompt) % 2 else prompt[:-1]  # odd: the last chunk of 2 holds a single token
    params = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=2)
    [events] = run(engine, [(prompt, params)])
    generation = events[0].generation
    expected = forward_logprobs(model, prompt)[:-1]  # row t: the distribution of prompt token t + 1
    assert len(generation.prompt_logprobs) == len(prompt) - 1
    for t, (logprob, top) in enumerate(generation.prompt_logprobs):
        assert logprob == pytest.approx(expected[t, prompt[t + 1]].item(), abs=1e-4)
        assert [i for i, _ in top] == torch.topk(expected[t], 2).indices.tolist()
    assert events[0].logprob is None  # the generated tokens' logprobs are asked for apart


def test_prompt_logprobs_score_a_prompt_the_prefix_cache_holds(make_model, small_tokenizer):
    """The prefix cache would skip the prompt's start (no logits there): scoring runs all of it."""
    model = make_model()
    engine = Engine(model, small_tokenizer, max_batch=2, prefix_cache_bytes=1_000_000, prefix_block_size=4)
    prompt = small_tokenizer.encode(
        "the lazy dog jumps over the lazy fox", prepend=small_tokenizer.get_bos_token_id()
    )
    run(engine, [(prompt, SamplingParams(max_tokens=2, temperature=0.0))])
    [events] = run(engine, [(prompt, SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0))])
    expected = forward_logprobs(model, prompt)[:-1]
    scored = events[0].generation.prompt_logprobs
    assert [lp for lp, _ in scored] == pytest.approx(
        [expected[t, prompt[t + 1]].item() for t in range(len(prompt) - 1)], abs=1e-4
    )
    before = engine.prefilled_tokens
    run(engine, [(prompt, SamplingParams(max_tokens=2, temperature=0.0))])
    assert engine.prefilled_tokens - before < len(prompt)  # without scoring, the cache is used again
