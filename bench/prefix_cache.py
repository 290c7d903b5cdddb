"""What prefix caching buys: time to first token with and without it, measured in one process on the same
model, runs interleaved (without, with, without, with, ...) so that the machine's load hits both alike. Run

    python -m bench.prefix_cache --json

The model is nanochat's shape at `--depth` (6: 6 layers x 384 wide, 3 heads) with random weights, the demo
model's tokenizer (vocabulary 2,048) and a context of 1,024 tokens; greedy, end-of-sequence ignored. Three
measurements, each of an engine without a prefix cache and of one with it (`nanochat.engine.Engine`, in
process: no HTTP, so the figures are the engine's and their ratios are what matter; the cache at the
service's default size, half the KV cache's bytes):

- `conversation`: a 10-turn conversation, each turn a `--message`-token user message and a `--reply`-token
  answer (about 100 new tokens a turn); TTFT of each turn (its prompt is the whole history; the best of
  `--conversations` runs each repeat), turn 10 / turn 1 with and without the cache.
- `shared_system_prompt`: 16 clients whose prompts are one 500-token system prompt and a question of their
  own, all arriving at once and served as the scheduler does (one prefill of at most 256 tokens at a time,
  interleaved with the batched decode); TTFT mean and p95.
- `miss`: the same 16 clients with prompts that share nothing: what the cache costs when it never hits,
  as the TTFT ratio (noisy on a shared machine: each repeat's is reported) and as `cache_work_share`, the
  time the engine with the cache spent in its `load`s and `store`s over the whole run's (median of the
  repeats after the first, whose engine starts with its pool's memory already touched, as a server's is
  once it has filled the pool; `cache_work_share_first_fill`: the first repeat's, on an untouched pool).

It also checks that both engines produced the same tokens (exit 1 if not). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import torch

from nanochat.backend import SamplingParams
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.memory import PREFIX_CACHE_SIZE  # of the KV cache's bytes, the service's default
from nanochat.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 1024
CLIENTS = 16
SYSTEM_TOKENS = 500
QUESTION_TOKENS = 20
CHUNK = 256  # the service's prefill chunk (NANOCHAT_PREFILL_CHUNK)


def build_model(depth: int, vocab_size: int) -> GPT:
    config = GPTConfig.for_depth(depth, vocab_size=vocab_size, sequence_len=CONTEXT)
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(0))
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # a zero head would make every logit equal
    return model.eval()


def engines(model: GPT, tokenizer: Tokenizer, first: str = "without") -> list[tuple[str, Engine]]:
    """("without", an engine with no prefix cache) and ("with", one with it), `first` first."""
    kwargs = {"max_batch": CLIENTS, "prefill_chunk": CHUNK}
    built = {
        "without": Engine(model, tokenizer, **kwargs),
        "with": Engine(model, tokenizer, prefix_cache_bytes=PREFIX_CACHE_SIZE, **kwargs),
    }
    return sorted(built.items(), key=lambda item: item[0] != first)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def conversation_turns(engine: Engine, messages: list[list[int]], reply: int) -> tuple[list[float], list]:
    """Each turn alone on the engine: (TTFT of each turn, the replies)."""
    history: list[int] = []
    ttfts, replies = [], []
    for message in messages:
        prompt = history + message
        start = time.perf_counter()
        generation = engine.begin(prompt, greedy(reply))
        while generation.prefill_remaining:
            engine.prefill(generation)
        ttfts.append(time.perf_counter() - start)
        while not generation.done:
            engine.decode_step()
        replies.append(generation.continuations[0].tokens)
        history = prompt + replies[-1]
    return ttfts, replies


def serve_together(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[list[float], list]:
    """All prompts arriving at once, admitted in order, one prefill chunk per turn between decode steps (as
    app/scheduler.py does): (TTFT of each, the outputs)."""
    waiting = deque(enumerate(prompts))
    prefilling, live = None, []
    ttft = [0.0] * len(prompts)
    outputs: list = [None] * len(prompts)
    start = time.perf_counter()
    while waiting or prefilling or live:
        if prefilling is None and waiting and engine.can_begin(1):
            i, prompt = waiting.popleft()
            prefilling = (i, engine.begin(prompt, greedy(max_tokens)))
        if prefilling is not None:
            i, generation = prefilling
            engine.prefill(generation, CHUNK)
            if not generation.prefill_remaining:
                ttft[i] = time.perf_counter() - start
                live.append((i, generation))
                prefilling = None
        engine.decode_step()
        for i, generation in live:
            if generation.done:
                outputs[i] = generation.continuations[0].tokens
        live = [(i, g) for i, g in live if not g.done]
    return ttft, outputs


def time_cache_work(engine: Engine) -> list[float]:
    """From now on, the seconds each of the engine's prefix cache `load`s and `store`s takes, appended to
    the list returned (what a miss costs, measured where it is spent rather than against a noisy total)."""
    spent: list[float] = []

    def timed(untimed):
        def call(*args):
            start = time.perf_counter()
            try:
                return untimed(*args)
            finally:
                spent.append(time.perf_counter() - start)

        return call

    cache = engine.prefix_cache
    cache.load, cache.store = timed(cache.load), timed(cache.store)
    return spent


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def run(depth: int, repeats: int, message: int, reply: int, turns: int, conversations: int = 3) -> dict:
    tokenizer = Tokenizer.from_directory(REPO_ROOT / "models" / "demo")
    vocab = tokenizer.get_vocab_size()
    model = build_model(depth, vocab)
    rng = random.Random(0)

    def words(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    messages = [words(message) for _ in range(turns)]
    system = words(SYSTEM_TOKENS)
    shared = [system + words(QUESTION_TOKENS) for _ in range(CLIENTS)]
    distinct = [words(SYSTEM_TOKENS + QUESTION_TOKENS) for _ in range(CLIENTS)]
    conversation = {"without": [], "with": []}
    together = {name: {"shared": [], "miss": []} for name in ("without", "with")}
    miss_cache_share = []  # the engine with the cache, all misses: its load + store seconds / the run's
    first_fill_share = []  # the same on a new pool (repeat 0): its first writes fault its pages in
    same = True
    warm = Engine(model, tokenizer, max_batch=CLIENTS, prefill_chunk=CHUNK)
    serve_together(warm, shared[:2], 2)  # warm-up: first calls allocate
    for repeat in range(repeats):  # A/B, then B/A, ...: fresh engines (an empty cache) each time
        first = ("without", "with")[repeat % 2]
        outputs = {}
        for pair in range(conversations):  # short runs, so several pairs each repeat
            for name, engine in engines(model, tokenizer, ("without", "with")[(repeat + pair) % 2]):
                ttfts, replies = conversation_turns(engine, messages, reply)
                conversation[name].append(ttfts)
                outputs[name] = replies
        for name, engine in engines(model, tokenizer, first):
            ttft, out = serve_together(engine, shared, 16)
            together[name]["shared"].append(ttft)
            outputs[name + "shared"] = out
        for name, engine in engines(model, tokenizer, first):
            fresh = repeat == 0 and engine.prefix_cache is not None
            if engine.prefix_cache is not None and not fresh:
                engine.prefix_cache.k.zero_()  # its pages touched, as in a server that has filled it once
                engine.prefix_cache.v.zero_()
            spent = time_cache_work(engine) if engine.prefix_cache is not None else []
            start = time.perf_counter()
            ttft, out = serve_together(engine, distinct, 16)
            if engine.prefix_cache is not None:
                share = sum(spent) / (time.perf_counter() - start)
                (first_fill_share if fresh else miss_cache_share).append(share)
            together[name]["miss"].append(ttft)
            outputs[name + "miss"] = out
        same &= all(outputs[k] == outputs[k.replace("without", "with", 1)] for k in outputs if "without" in k)

    def best_turns(runs: list[list[float]]) -> list[float]:
        return [min(r[t] for r in runs) for t in range(turns)]

    result: dict = {
        "model": {**model.config.to_dict(), "parameters": model.num_parameters()},
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "identical_tokens": same,
        "conversation": {"turns": turns, "message_tokens": message, "reply_tokens": reply},
    }
    for name in ("without", "with"):
        best = best_turns(conversation[name])
        result["conversation"][name] = {
            "ttft_ms_by_turn": [round(1000 * t, 1) for t in best],
            "turn_last_over_turn1": round(best[-1] / best[0], 2),
            # each run's own ratio (its turns close in time), the median of them: steadier under load
            "turn_last_over_turn1_median_of_runs": round(
                statistics.median(r[-1] / r[0] for r in conversation[name]), 2
            ),
        }
    base = best_turns(conversation["without"])[-1]
    result["conversation"]["turn_last_speedup"] = round(base / best_turns(conversation["with"])[-1], 2)
    for case in ("shared", "miss"):
        figures = {}
        for name in ("without", "with"):
            means = [statistics.mean(r) for r in together[name][case]]
            p95s = [p95(r) for r in together[name][case]]
            figures[name] = {
                "ttft_mean_ms": round(1000 * min(means), 1),
                "ttft_p95_ms": round(1000 * min(p95s), 1),
            }
        figures["mean_ratio_with_over_without"] = round(
            figures["with"]["ttft_mean_ms"] / figures["without"]["ttft_mean_ms"], 3
        )
        figures["mean_ratio_by_repeat"] = [  # each repeat's pair: the spread is the noise
            round(statistics.mean(w) / statistics.mean(wo), 3)
            for w, wo in zip(together["with"][case], together["without"][case], strict=True)
        ]
        key = "shared_system_prompt" if case == "shared" else "miss"
        result[key] = {"clients": CLIENTS, "prompt_tokens": SYSTEM_TOKENS + QUESTION_TOKENS, **figures}
    result["miss"]["cache_work_share"] = round(statistics.median(miss_cache_share or first_fill_share), 4)
    result["miss"]["cache_work_share_first_fill"] = round(first_fill_share[0], 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.prefix_cache", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--depth", type=int, default=6, help="model depth (default 6: 6 x 384, 3 heads)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs; the best of each (default 3)")
    parser.add_argument("--turns", type=int, default=10, help="conversation turns (default 10)")
    parser.add_argument(
        "--conversations", type=int, default=3, help="conversation A/B pairs each repeat (default 3)"
    )
    parser.add_argument("--message", type=int, default=50, help="user message tokens a turn (default 50)")
    parser.add_argument("--reply", type=int, default=50, help="reply tokens a turn (default 50)")
    parser.add_argument("--json", action="store_true", help="one JSON object (default: indented)")
    args = parser.parse_args(argv)
    if args.turns * (args.message + args.reply) > CONTEXT:
        parser.error(f"{args.turns} turns of {args.message + args.reply} tokens exceed the context {CONTEXT}")
    torch.set_num_threads(args.threads)
    result = run(args.depth, args.repeats, args.message, args.reply, args.turns, args.conversations)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    if not result["identical_tokens"]:
        print("the engines with and without the prefix cache produced different tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
