"""The engine: batching is invisible to each request, sampling, limits, stop rules and the calculator tool."""

from __future__ import annotations

import itertools
import random
from collections import deque

import pytest
import torch

from nanochat.backend import CapacityError, EngineError, SamplingParams
from nanochat.batching import sample_next_token
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig


def run_alone(model, tokenizer, prompt, params, max_seq_len=None):
    engine = Engine(model, tokenizer, max_batch=params.n, max_seq_len=max_seq_len)
    request = engine.begin(prompt, params)
    events = []
    while request.prefill_remaining:
        events += engine.prefill(request)
    while not request.done:
        events += engine.decode_step()
    assert engine.num_decoding == 0 and engine.free_rows() == params.n
    return request, events


def tokens_of(events, index=0):
    return [e.token for e in events if e.index == index]


def run_together(engine, jobs, chunk=8, cancel_at=None):
    """A small continuous-batching loop: admit FIFO, prefill one chunk, then one decode step for all.

    jobs: list of (prompt, params). Returns {job index: events}. `cancel_at`: (job index, step) to drop.
    """
    waiting = deque(enumerate(jobs))
    prefilling = None
    live = {}
    events = {i: [] for i in range(len(jobs))}
    step = 0
    while waiting or prefilling or live:
        if prefilling is None and waiting and engine.can_begin(waiting[0][1][1].n):
            i, (prompt, params) = waiting.popleft()
            prefilling = (i, engine.begin(prompt, params))
        if prefilling is not None:
            i, request = prefilling
            new = engine.prefill(request, max_tokens=chunk)
            if not request.prefill_remaining:
                prefilling = None
                events[i] += new
                if not request.done:
                    live[i] = request
        by_request = {id(r): i for i, r in live.items()}
        for event in engine.decode_step():
            events[by_request[id(event.generation)]].append(event)
        step += 1
        if cancel_at and cancel_at[1] == step and cancel_at[0] in live:
            engine.cancel(live[cancel_at[0]])
        live = {i: r for i, r in live.items() if not r.done}
    assert engine.num_decoding == 0 and engine.free_rows() == engine.max_batch
    return events


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_batched_mixed_length_decode_equals_one_at_a_time(make_model, small_tokenizer, n_kv_head):
    """Requests of different lengths join and leave a shared batch (more requests than rows, chunked
    prefills interleaved with decoding, one cancelled mid-way) and still produce exactly their solo tokens."""
    model = make_model(n_head=4, n_kv_head=n_kv_head, sequence_len=128)
    rng = random.Random(1)
    jobs = []
    for i, length in enumerate([3, 40, 17, 9, 25, 1, 33, 12]):
        prompt = [rng.randrange(small_tokenizer.get_vocab_size()) for _ in range(length)]
        greedy = i % 2 == 0
        params = SamplingParams(
            max_tokens=rng.randint(4, 30),
            temperature=0.0 if greedy else 0.9,
            top_k=None if greedy else 40,
            seed=100 + i,
            ignore_eos=True,
        )
        jobs.append((prompt, params))
    solo = [tokens_of(run_alone(model, small_tokenizer, p, s)[1]) for p, s in jobs]
    engine = Engine(model, small_tokenizer, max_batch=3)
    together = run_together(engine, jobs, chunk=8, cancel_at=(1, 6))
    for i, (prompt, params) in enumerate(jobs):
        got = tokens_of(together[i])
        if i == 1:  # cancelled: a prefix of its solo run
            assert got == solo[i][: len(got)] and len(got) < len(solo[i])
        else:
            assert got == solo[i], f"job {i} (prompt {len(prompt)} tokens) differs when batched"
            assert len(got) == params.max_tokens
            assert together[i][-1].finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_seed_dependent(make_model, small_tokenizer):
    model = make_model()
    prompt = [5, 6, 7, 8]

    def sample(seed):
        params = SamplingParams(max_tokens=20, temperature=1.5, seed=seed, ignore_eos=True)
        return tokens_of(run_alone(model, small_tokenizer, prompt, params)[1])

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_n_continuations_share_the_first_token_when_asked(make_model, small_tokenizer):
    model = make_model()
    params = SamplingParams(
        max_tokens=12, temperature=1.5, seed=3, n=3, ignore_eos=True, shared_first_token=True
    )
    _, events = run_alone(model, small_tokenizer, [1, 2, 3], params)
    rows = [tokens_of(events, i) for i in range(3)]
    assert rows[0][0] == rows[1][0] == rows[2][0]
    assert len({tuple(r) for r in rows}) == 3  # then they diverge
    assert all(len(r) == 12 for r in rows)


def test_sampling_rules():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5], [4.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next_token(logits, g, temperature=0.0).tolist() == [1, 0]
    assert sample_next_token(logits, g, temperature=1e-300).tolist() == [1, 0]  # overflow-safe: greedy
    assert sample_next_token(logits, g, temperature=1.0, top_p=5e-324).tolist() == [1, 0]  # fp32 rounds to 0
    assert sample_next_token(logits, g, temperature=1.0, top_k=1).tolist() == [1, 0]
    # top_p keeps the smallest set reaching p: here only the best token
    for _ in range(20):
        assert sample_next_token(logits, g, temperature=1.0, top_p=0.05).tolist() == [1, 0]
    # top_k=2 never picks outside the two best
    picks = {sample_next_token(logits[:1], g, temperature=5.0, top_k=2).item() for _ in range(200)}
    assert picks == {1, 3}
    # full sampling at high temperature reaches every token
    picks = {sample_next_token(logits[:1], g, temperature=50.0).item() for _ in range(400)}
    assert picks == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"n": 0}, "n must"),
        ({"stop": (3,)}, "stop"),
    ],
)
def test_sampling_params_validation(kwargs, message):
    with pytest.raises(EngineError, match=message):
        SamplingParams(**kwargs)


def test_begin_rejects_bad_requests(make_model, small_tokenizer):
    engine = Engine(make_model(sequence_len=32), small_tokenizer, max_batch=2)
    params = SamplingParams(max_tokens=4)
    with pytest.raises(EngineError, match="empty"):
        engine.begin([], params)
    with pytest.raises(EngineError, match="context is 32"):
        engine.begin([1] * 33, params)
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.begin([1, 10**6], params)
    with pytest.raises(EngineError, match="batch of 2"):
        engine.begin([1], SamplingParams(n=3))
    engine.begin([1, 2], params)
    with pytest.raises(CapacityError):
        engine.begin([1, 2], params)  # one prefill at a time


def test_context_limit_finishes_with_length(make_model, small_tokenizer):
    model = make_model(sequence_len=16)
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    _, events = run_alone(model, small_tokenizer, list(range(1, 11)), params)
    assert len(events) == 16 - 10 + 1  # the last sampled token needs no cache slot
    assert events[-1].finish_reason == "length"
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)


# ---- programmed models: real GPT weights that follow a token chain, to test stop rules and tools ----


def chain_model(vocab_size: int, successor: dict[int, int], default: int) -> GPT:
    """A GPT whose greedy next token depends only on the current one: successor[t] (else `default`).

    Attention and MLP outputs are zeroed, so the final hidden state is a scaled one-hot of the token,
    and the head maps it to its successor.
    """
    config = GPTConfig(sequence_len=256, vocab_size=vocab_size, n_layer=1, n_head=4, n_kv_head=4, n_embd=384)
    assert vocab_size <= config.n_embd
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[:, :vocab_size] = torch.eye(vocab_size)
        head = torch.zeros(vocab_size, config.n_embd)
        for t in range(vocab_size):
            head[successor.get(t, default), t] = 1.0
        model.lm_head.weight.copy_(head)
    return model.eval()


def chain(*segments):
    """Token ids of the segments in order, and the successor map that makes a chain model follow them."""
    ids = [t for seg in segments for t in seg]
    assert len(set(ids)) == len(ids), f"a chain must not repeat a token: {ids}"
    return ids, dict(itertools.pairwise(ids))


def test_streamed_text_never_splits_a_utf8_character(small_tokenizer):
    tok = small_tokenizer
    end = tok.encode_special("<|assistant_end|>")
    euro = list("€".encode())  # three single-byte tokens (ids = byte values): not merged by this tokenizer
    ids, succ = chain([tok.encode_special("<|bos|>")], tok.encode(" quick"), euro, tok.encode(" fox"), [end])
    model = chain_model(tok.get_vocab_size(), succ, end)
    _, events = run_alone(model, tok, ids[:1], SamplingParams(max_tokens=50, temperature=0.0))
    assert [e.token for e in events] == ids[1:]
    texts = [e.text for e in events]
    assert "".join(texts) == " quick€ fox"
    assert "€" in texts  # released whole, once its third byte arrived
    assert all("\ufffd" not in t for t in texts)
    assert events[-1].finish_reason == "stop" and events[-1].text == ""


def test_stop_strings_and_stop_ids(small_tokenizer):
    tok = small_tokenizer
    end = tok.encode_special("<|assistant_end|>")
    ids, succ = chain([tok.encode_special("<|bos|>")], tok.encode(" the quick brown fox jumps"), [end])
    model = chain_model(tok.get_vocab_size(), succ, end)
    # a stop string spanning several tokens ends the text just before it
    params = SamplingParams(max_tokens=50, temperature=0.0, stop=("n fox",))
    _, events = run_alone(model, tok, ids[:1], params)
    assert "".join(e.text for e in events) == " the quick brow"
    assert events[-1].finish_reason == "stop"
    # a stop token id
    stop_id = ids[3]
    params = SamplingParams(max_tokens=50, temperature=0.0, stop_token_ids=(stop_id,))
    _, events = run_alone(model, tok, ids[:1], params)
    assert [e.token for e in events] == ids[1:4] and events[-1].finish_reason == "stop"
    # max_tokens
    _, events = run_alone(model, tok, ids[:1], SamplingParams(max_tokens=2, temperature=0.0))
    assert [e.token for e in events] == ids[1:3] and events[-1].finish_reason == "length"
    # ignore_eos runs past <|assistant_end|> until the limit
    params = SamplingParams(max_tokens=len(ids) + 3, temperature=0.0, ignore_eos=True)
    _, events = run_alone(model, tok, ids[:1], params)
    assert len(events) == len(ids) + 3


def test_calculator_tool_output_is_forced_into_the_stream(small_tokenizer):
    tok = small_tokenizer
    sp = tok.encode_special
    end = sp("<|assistant_end|>")
    expression = tok.encode("12*7")
    ids, succ = chain(
        [sp("<|assistant_start|>")],
        tok.encode(" the"),
        [sp("<|python_start|>"), *expression, sp("<|python_end|>")],
    )
    after = tok.encode(" lazy dog")
    succ[sp("<|output_end|>")] = after[0]
    succ.update(zip(after, [*after[1:], end], strict=True))
    model = chain_model(tok.get_vocab_size(), succ, end)
    request, events = run_alone(model, tok, ids[:1], SamplingParams(max_tokens=60, temperature=0.0))
    forced_part = [sp("<|output_start|>"), *tok.encode("84"), sp("<|output_end|>")]
    assert [e.token for e in events] == ids[1:] + forced_part + after + [end]
    assert [e.forced for e in events] == [False] * (len(ids) - 1) + [True] * len(forced_part) + [False] * (
        len(after) + 1
    )
    assert request.continuations[0].masks == [0 if e.forced else 1 for e in events]
    assert "".join(e.text for e in events) == " the12*784 lazy dog"  # special tokens carry no text
    # with tools off nothing is forced: after <|python_end|> comes the model's own token
    request, events = run_alone(
        model, tok, ids[:1], SamplingParams(max_tokens=60, temperature=0.0, tools=False)
    )
    assert not any(e.forced for e in events)
    assert events[len(ids) - 1].token == end


def test_cancel_and_rows_are_reused(make_model, small_tokenizer):
    model = make_model()
    engine = Engine(model, small_tokenizer, max_batch=2)
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    first = engine.begin([1, 2, 3], params)
    engine.prefill(first)
    second = engine.begin([4, 5], params)
    assert engine.free_rows() == 0 and not engine.can_begin()
    engine.cancel(second)  # while prefilling
    assert engine.free_rows() == 1
    engine.decode_step()
    engine.cancel(first)  # while decoding
    assert first.done and engine.num_decoding == 0 and engine.free_rows() == 2
    assert engine.decode_step() == []
