"""Prefix caching: the same tokens with and without it, prefill work actually skipped, blocks found only
after the same earlier tokens, and a byte budget kept by evicting the least recently used."""

from __future__ import annotations

import io
import random

import pytest
import torch

from nanochat.backend import SamplingParams
from nanochat.checkpoint import load_checkpoint
from nanochat.cli import EXIT_USAGE, chat_engine, main
from nanochat.engine import Engine
from nanochat.prefix_cache import PrefixCache, block_names, resolve_budget, runs
from tests.nanochat.test_engine import chain, chain_model, run_together

BLOCK = 8
PLENTY = 1 << 30


def engines(model, tokenizer, max_batch=4, budget=PLENTY) -> tuple[Engine, Engine]:
    """The same model without and with a prefix cache."""
    plain = Engine(model, tokenizer, max_batch=max_batch)
    cached = Engine(model, tokenizer, max_batch=max_batch, prefix_cache_bytes=budget, prefix_block_size=BLOCK)
    return plain, cached


def run(engine: Engine, prompt: list[int], params: SamplingParams) -> list[list[int]]:
    """One generation alone; every continuation's tokens."""
    generation = engine.begin(prompt, params)
    while generation.prefill_remaining:
        engine.prefill(generation)
    while not generation.done:
        engine.decode_step()
    return [c.tokens for c in generation.continuations]


def block_bytes(model) -> int:
    c = model.config
    return 2 * c.n_layer * c.n_kv_head * BLOCK * c.head_dim * 4


def tokens(rng: random.Random, vocab: int, length: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(length)]


GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


def test_shared_prefixes_give_the_same_tokens_with_less_prefill(make_model, small_tokenizer):
    """Many prompts over two system prompts, batched (chunked prefills interleaved with decoding), greedy
    and seeded sampling, n up to 3: every token equal with and without the cache, and far fewer prefilled."""
    model = make_model(sequence_len=160)
    vocab = small_tokenizer.get_vocab_size()
    rng = random.Random(3)
    systems = [tokens(rng, vocab, 37), tokens(rng, vocab, 21)]
    jobs = []
    for i in range(12):
        prompt = systems[i % 2] + tokens(rng, vocab, rng.randint(1, 20))
        n = (1, 2, 3)[i % 3]
        sampled = i % 4 == 3
        params = SamplingParams(
            max_tokens=rng.randint(3, 12),
            temperature=0.8 if sampled else 0.0,
            top_k=30 if sampled else None,
            seed=i,
            n=n,
            ignore_eos=True,
        )
        jobs.append((prompt, params))
    plain, cached = engines(model, small_tokenizer, max_batch=5)
    expected = run_together(plain, jobs, chunk=8)
    got = run_together(cached, jobs, chunk=8)
    for i in range(len(jobs)):
        for index in range(jobs[i][1].n):
            assert [e.token for e in got[i] if e.index == index] == [
                e.token for e in expected[i] if e.index == index
            ], (i, index)
    stats = cached.prefix_cache_stats()
    assert stats is not None and plain.prefix_cache_stats() is None
    assert stats.hits >= 10 and stats.reused_tokens >= 10 * 16
    assert cached.prefilled_tokens == plain.prefilled_tokens - stats.reused_tokens


def test_a_hit_skips_the_prefill_of_its_blocks_and_leaves_the_last_token(make_model, small_tokenizer):
    """Blocks copied from the cache (the row has served another sequence since): every full block but the
    one holding the prompt's last token."""
    model = make_model()
    vocab = small_tokenizer.get_vocab_size()
    prompt = tokens(random.Random(0), vocab, 4 * BLOCK)  # whole blocks: the last one cannot be reused
    unrelated = [prompt[0] + 1, prompt[0] + 2, prompt[0] + 3]
    plain, cached = engines(model, small_tokenizer)
    first = run(cached, prompt, GREEDY)
    assert cached.prefilled_tokens == len(prompt)
    assert cached.prefix_cache_stats().misses == 1 and cached.prefix_cache_stats().hits == 0
    run(cached, unrelated, GREEDY)  # another sequence in the row: what follows comes from blocks
    before = cached.prefilled_tokens
    second = run(cached, prompt, GREEDY)
    assert cached.prefilled_tokens - before == BLOCK  # three blocks reused, the fourth prefilled
    assert cached.prefix_cache_stats().reused_tokens == 3 * BLOCK
    assert first == second == run(plain, prompt, GREEDY)
    # a longer prompt over the same start reuses every block the earlier sequence filled
    longer = prompt + first[0] + tokens(random.Random(1), vocab, 5)
    run(cached, unrelated, GREEDY)
    before = cached.prefilled_tokens
    assert run(cached, longer, GREEDY) == run(plain, longer, GREEDY)
    in_row = len(prompt) + len(first[0]) - 1  # the last token sampled was never run through the model
    reused = (in_row // BLOCK) * BLOCK
    assert cached.prefilled_tokens - before == len(longer) - reused


def test_the_next_turn_finds_its_start_in_the_row_and_prefills_only_new_tokens(make_model, small_tokenizer):
    """Alone on the engine, a conversation's next turn lands in the row that served the last one: no block
    is needed and every token the row holds is reused, not only whole blocks (the last reply token, never
    run through the model, is the only old one prefilled)."""
    model = make_model(sequence_len=256)
    vocab = small_tokenizer.get_vocab_size()
    rng = random.Random(9)
    plain, cached = engines(model, small_tokenizer)
    history: list[int] = []
    for turn in range(5):
        message = tokens(rng, vocab, 5 + 3 * turn)  # rows end mid-block: whole blocks alone would reuse less
        prompt = history + message
        before = cached.prefilled_tokens
        reply = run(cached, prompt, GREEDY)[0]
        assert reply == run(plain, prompt, GREEDY)[0], turn
        if turn:
            assert cached.prefilled_tokens - before == len(message) + 1, turn
        history = prompt + reply
    stats = cached.prefix_cache_stats()
    assert (stats.hits, stats.misses) == (4, 1)
    assert cached.prefilled_tokens == plain.prefilled_tokens - stats.reused_tokens


def test_a_row_written_over_since_is_not_reused(make_model, small_tokenizer):
    """A prefill begun in the row and cancelled has written over what the row held; so has a sequence
    moved into it when another left. The next prompts get blocks from the cache, never stale keys."""
    model = make_model()
    vocab = small_tokenizer.get_vocab_size()
    rng = random.Random(10)
    plain, cached = engines(model, small_tokenizer)
    prompt = tokens(rng, vocab, 3 * BLOCK + 2)
    (first,) = run(cached, prompt, GREEDY)  # the row now holds prompt + first[:-1]
    detour = [prompt[0], *tokens(rng, vocab, 2 * BLOCK)]  # one token in common, then over the row
    generation = cached.begin(detour, GREEDY)
    cached.prefill(generation, BLOCK)
    cached.cancel(generation)
    follow = [*prompt, *first, 7]
    before = cached.prefilled_tokens
    assert run(cached, follow, GREEDY) == run(plain, follow, GREEDY)
    in_row = len(prompt) + len(first) - 1
    assert cached.prefilled_tokens - before == len(follow) - (in_row // BLOCK) * BLOCK  # blocks only

    # two sequences decoding; the shorter leaves first and the longer moves into its row 0, then leaves
    # from there: row 0 holds the longer one's sequence (reused to the token), not the shorter one's
    a, b = tokens(rng, vocab, 2 * BLOCK + 3), tokens(rng, vocab, 2 * BLOCK + 5)
    jobs = [(a, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)), (b, GREEDY)]
    got, expected = run_together(cached, jobs, chunk=8), run_together(plain, jobs, chunk=8)
    out_a, out_b = ([e.token for e in got[i]] for i in (0, 1))
    assert [out_a, out_b] == [[e.token for e in expected[i]] for i in (0, 1)]
    for sequence, out, in_place in ((b, out_b, True), (a, out_a, False)):
        follow = [*sequence, *out, 5]
        before = cached.prefilled_tokens
        assert run(cached, follow, GREEDY) == run(plain, follow, GREEDY)
        in_row = len(sequence) + len(out) - 1
        reused = in_row if in_place else (in_row // BLOCK) * BLOCK
        assert cached.prefilled_tokens - before == len(follow) - reused, in_place


def test_a_multi_turn_conversation_reuses_the_earlier_turns(make_model, small_tokenizer):
    """Each turn's prompt is the last one, its reply and a new message: the cache turns the prefill of turn
    k into about the new message alone, and the replies are those of a plain engine."""
    model = make_model(sequence_len=256)
    vocab = small_tokenizer.get_vocab_size()
    rng = random.Random(5)
    plain, cached = engines(model, small_tokenizer)
    history: list[int] = []
    for turn in range(6):
        message = tokens(rng, vocab, rng.randint(5, 15))
        prompt = history + message
        before = cached.prefilled_tokens
        reply = run(cached, prompt, GREEDY)[0]
        assert reply == run(plain, prompt, GREEDY)[0], turn
        if turn:
            assert cached.prefilled_tokens - before <= len(message) + BLOCK, turn
        history = prompt + reply
    assert cached.prefix_cache_stats().hits == 5


def test_n_continuations_each_keep_their_own_sequence(make_model, small_tokenizer):
    """n=3 sampled continuations: each sequence's blocks are kept; a follow-up on any one of them is a hit
    and gives the plain engine's tokens."""
    model = make_model()
    vocab = small_tokenizer.get_vocab_size()
    prompt = tokens(random.Random(2), vocab, 19)
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=7, n=3, ignore_eos=True)
    plain, cached = engines(model, small_tokenizer)
    outputs = run(cached, prompt, params)
    assert outputs == run(plain, prompt, params)
    assert len({tuple(o) for o in outputs}) > 1
    for output in outputs:
        follow_up = prompt + output + [5, 6, 7]
        before = cached.prefix_cache_stats().reused_tokens
        assert run(cached, follow_up, GREEDY) == run(plain, follow_up, GREEDY)
        assert cached.prefix_cache_stats().reused_tokens - before >= 4 * BLOCK


def test_blocks_are_found_only_after_the_same_earlier_tokens(make_model, small_tokenizer):
    """A prompt that differs from a cached one only in its first token shares every later block's tokens,
    yet reuses nothing: a block's keys and values depend on every token before it."""
    model = make_model()
    vocab = small_tokenizer.get_vocab_size()
    prompt = tokens(random.Random(4), vocab, 5 * BLOCK + 3)
    other = [(prompt[0] + 1) % vocab, *prompt[1:]]
    assert block_names(prompt, BLOCK, 5)[1:] != block_names(other, BLOCK, 5)[1:]
    plain, cached = engines(model, small_tokenizer)
    run(cached, prompt, GREEDY)
    assert run(cached, other, GREEDY) == run(plain, other, GREEDY)
    stats = cached.prefix_cache_stats()
    assert (stats.hits, stats.misses, stats.reused_tokens) == (0, 2, 0)
    assert cached.prefilled_tokens == len(prompt) + len(other)


def test_a_tiny_budget_evicts_the_least_recently_used_and_stays_within_it(make_model, small_tokenizer):
    model = make_model()
    vocab = small_tokenizer.get_vocab_size()
    budget = 3 * block_bytes(model) + 100
    plain, cached = engines(model, small_tokenizer, budget=budget)
    rng = random.Random(6)
    system = tokens(rng, vocab, 2 * BLOCK + 1)
    for i in range(8):
        prompt = (system if i % 2 else []) + tokens(rng, vocab, rng.randint(1, 30))
        assert run(cached, prompt, GREEDY) == run(plain, prompt, GREEDY), i
        stats = cached.prefix_cache_stats()
        assert stats.bytes <= budget and stats.blocks <= 3
    assert stats.evicted_blocks > 0
    # the most recent sequence's head is still there; a budget below one block keeps nothing
    assert cached.prefix_cache.match(prompt[: 2 * BLOCK + 1])
    nothing = Engine(
        model, small_tokenizer, prefix_cache_bytes=block_bytes(model) - 1, prefix_block_size=BLOCK
    )
    run(nothing, system, GREEDY)
    assert nothing.prefix_cache_stats().blocks == 0 and nothing.prefix_cache_stats().bytes == 0


def pool(blocks: int, extra: int = 0) -> PrefixCache:
    """A cache of 2 layers x 1 head x 2 dims with room for `blocks` blocks (and `extra` bytes more)."""
    return PrefixCache(blocks * 2 * 2 * BLOCK * 2 * 4 + extra, BLOCK, n_layer=2, n_kv_head=1, head_dim=2)


def row(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache row's keys and values for `pool`: (2, 1, length, 2) each."""
    generator = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 1, length, 2, generator=generator)
    return k, torch.randn(2, 1, length, 2, generator=generator)


def test_lru_evicts_a_chains_tail_before_its_head():
    cache = pool(3)
    first = list(range(3 * BLOCK))
    assert cache.store(first, *row(3 * BLOCK)) == 3
    assert cache.store([99] * BLOCK + [1], *row(BLOCK + 1)) == 1  # one more block: the oldest is dropped
    assert cache.evicted_blocks == 1
    assert len(cache.match([*first, 0])) == 2  # the head two blocks of `first` are still there


def test_the_pool_is_allocated_once_within_the_budget_and_gives_back_what_it_kept():
    cache = pool(3, extra=100)
    assert cache.slots == 3 and cache.k.nbytes + cache.v.nbytes == 3 * cache.block_bytes <= cache.max_bytes
    pool_memory = (cache.k.data_ptr(), cache.v.data_ptr())
    tokens = list(range(2 * BLOCK + 5))
    k, v = row(len(tokens))
    assert cache.store(tokens, k, v) == 2  # full blocks only: the last 5 tokens are not kept
    assert cache.stats().blocks == 2 and cache.stats().bytes == 2 * cache.block_bytes
    into_k, into_v = torch.zeros(2, 1, 4 * BLOCK, 2), torch.zeros(2, 1, 4 * BLOCK, 2)
    assert cache.load([*tokens, 7], into_k, into_v) == 2 * BLOCK
    assert torch.equal(into_k[:, :, : 2 * BLOCK], k[:, :, : 2 * BLOCK])
    assert torch.equal(into_v[:, :, : 2 * BLOCK], v[:, :, : 2 * BLOCK])
    assert not into_k[:, :, 2 * BLOCK :].any() and not into_v[:, :, 2 * BLOCK :].any()
    for seed in range(5):  # evictions reuse the slots; nothing is allocated past the pool
        cache.store([seed + 100, *tokens], *row(len(tokens) + 1, seed))
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == pool_memory and cache.stats().bytes <= cache.max_bytes


def test_a_sequence_longer_than_the_pool_keeps_its_head_and_evicts_others_first():
    cache = pool(3)
    other = [5] * (2 * BLOCK)
    cache.store(other, *row(2 * BLOCK))
    long = list(range(5 * BLOCK))
    k, v = row(5 * BLOCK, seed=1)
    assert cache.store(long, k, v) == 3  # the other sequence's two blocks go, then no slot is left
    assert cache.evicted_blocks == 2 and not cache.match([*other, 0])
    into_k, into_v = torch.zeros_like(k), torch.zeros_like(v)
    assert cache.load(long, into_k, into_v) == 3 * BLOCK  # its first three blocks, reachable from the start
    assert torch.equal(into_k[:, :, : 3 * BLOCK], k[:, :, : 3 * BLOCK])


def test_a_miss_keeps_only_the_full_blocks_of_the_sequence(make_model, small_tokenizer):
    """All misses: the cache ends up holding each sequence's full blocks (of the tokens in its row) and
    nothing else, in the pool it was made with."""
    model = make_model()
    vocab = small_tokenizer.get_vocab_size()
    plain, cached = engines(model, small_tokenizer)
    pool_memory = cached.prefix_cache.k.data_ptr()
    rng = random.Random(8)
    held = 0
    for length in (BLOCK - 1, BLOCK, 2 * BLOCK + 3, 3 * BLOCK - 2):
        prompt = [length % vocab, *tokens(rng, vocab, length - 1)]  # distinct first tokens: no hits
        assert run(cached, prompt, GREEDY) == run(plain, prompt, GREEDY)
        held += (length + GREEDY.max_tokens - 1) // BLOCK  # the last token sampled never enters the row
        assert cached.prefix_cache_stats().blocks == held, length
    stats = cached.prefix_cache_stats()
    assert (stats.hits, stats.misses, stats.evicted_blocks) == (0, 4, 0)
    assert cached.prefix_cache.k.data_ptr() == pool_memory


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], []),
        ([(0, 0), (1, 1), (2, 2)], [(0, 0, 3)]),
        ([(0, 5), (1, 6), (2, 2), (3, 3), (5, 4)], [(0, 5, 2), (2, 2, 2), (5, 4, 1)]),
    ],
)
def test_blocks_in_consecutive_slots_move_as_one_run(pairs, expected):
    assert list(runs(pairs)) == expected


def test_the_calculator_tool_runs_the_same_with_the_cache(small_tokenizer):
    """A tool call's forced tokens are part of the sequence kept: a follow-up over them is a hit, and the
    events (forced flags included) are the plain engine's."""
    tok = small_tokenizer
    sp = tok.encode_special
    end = sp("<|assistant_end|>")
    ids, succ = chain(
        [sp("<|assistant_start|>")],
        tok.encode(" the"),
        [sp("<|python_start|>"), *tok.encode("12*7"), sp("<|python_end|>")],
    )
    after = tok.encode(" lazy dog")
    succ[sp("<|output_end|>")] = after[0]
    succ.update(zip(after, [*after[1:], end], strict=True))
    model = chain_model(tok.get_vocab_size(), succ, end)
    plain, cached = engines(model, tok)
    params = SamplingParams(max_tokens=60, temperature=0.0)
    prompt = [sp("<|bos|>")] * 9 + ids[:1]
    (output,) = run(cached, prompt, params)
    assert [output] == run(plain, prompt, params) and sp("<|output_start|>") in output
    follow_up = prompt + output + [sp("<|user_start|>")]
    assert run(cached, follow_up, params) == run(plain, follow_up, params)
    assert cached.prefix_cache_stats().hits == 1


@pytest.mark.parametrize(("size", "pool", "budget"), [(0.5, 1000, 500), (1.0, 1000, 1000), (4096, 10, 4096)])
def test_a_budget_is_a_fraction_of_the_pool_or_bytes(size, pool, budget):
    assert resolve_budget(size, pool) == budget


def test_chat_reuses_the_earlier_turns(tmp_path, make_model, write_checkpoint, monkeypatch, capsys):
    """`nanochat chat --checkpoint` has the cache by default and `--no-enable-prefix-caching` turns it off;
    the replies are the same either way, and with it each turn after the first is a hit."""
    model = make_model(n_layer=1, n_embd=32, n_head=2, n_kv_head=1, sequence_len=256)
    directory = str(write_checkpoint(tmp_path / "tiny", model, step=7))
    replies = {}
    for flag in ("--enable-prefix-caching", "--no-enable-prefix-caching"):
        monkeypatch.setattr("sys.stdin", io.StringIO("hello there\nwhat is two and two\nand three\nquit\n"))
        code = main(["chat", "--checkpoint", directory, "--max-tokens", "6", "--temperature", "0", flag])
        out, err = capsys.readouterr()
        assert code == 0, err
        replies[flag] = out
    assert replies["--enable-prefix-caching"] == replies["--no-enable-prefix-caching"]
    assert replies["--enable-prefix-caching"].count("Assistant:") == 3

    loaded = load_checkpoint(directory)
    assert chat_engine(loaded.model, loaded.tokenizer, False).prefix_cache is None
    engine = chat_engine(loaded.model, loaded.tokenizer, None)  # the default: on
    # the conversation as chat renders it: its replies re-encoded from text, so only the system message's
    # blocks are sure to recur (a random model's text need not encode back to the same tokens)
    messages = [{"role": "system", "content": "You answer in one short sentence, in plain words. " * 3}]
    for text in ("hello there", "what is two and two", "and three"):
        messages.append({"role": "user", "content": text})
        prompt = loaded.tokenizer.render_for_completion(
            {"messages": [*messages, {"role": "assistant", "content": ""}]}
        )
        reply = run(engine, prompt, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))[0]
        messages.append({"role": "assistant", "content": loaded.tokenizer.decode(reply)})
    stats = engine.prefix_cache_stats()
    assert (stats.hits, stats.misses) == (2, 1) and stats.reused_tokens >= 2 * 16

    code = main(["chat", "--url", "http://127.0.0.1:9", "--enable-prefix-caching"])
    assert code == EXIT_USAGE and "--enable-prefix-caching" in capsys.readouterr().err
