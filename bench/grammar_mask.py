"""Which grammar library for constrained decoding: llguidance or xgrammar, measured on what the engine does
each decode step (a token mask for every constrained row, filled in one batched call, then each row takes
its token). Run

    python -m bench.grammar_mask --json

For each library, two tokenizers (the demo model's, vocabulary 2,048, and a nanochat tokenizer of
nanochat's real vocabulary, 65,536, trained here with `Tokenizer.train_from_iterator` on the Python
sources of this machine's standard library, cached in `--cache`) and two grammars (a JSON schema of a few
fields with an enum, an array and a nested object; any JSON object, OpenAI's json_object), it reports the
tokenizer's and the grammar's compile times and, at batch 16 and 64, the batched mask fill per step (mean
over the steps of writing one document per row; each row a different document, so the states differ) and
the token advance per step; then the ratio xgrammar / llguidance of each mask time. Special tokens are
never text: both libraries get them as such (llguidance from tiktoken's special tokens, xgrammar as empty
tokens). A library that is not installed is skipped with a message. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from nanochat.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCHES = (16, 64)
BIG_VOCAB = 65_536
TRAINING_BYTES = 40_000_000  # of text to train it on: enough for 65,536 tokens
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "maple", "harbor", "quiet", "amber"]


def documents(count: int, seed: int = 0) -> list[str]:
    """`count` different compact JSON documents valid against SCHEMA (also JSON objects)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        doc = {
            "name": " ".join(rng.sample(WORDS, 2)).title(),
            "age": rng.randrange(1, 100),
            "color": rng.choice(["red", "green", "blue"]),
            "tags": rng.sample(WORDS, rng.randrange(0, 4)),
            "address": {"city": rng.choice(WORDS).title(), "zip": str(rng.randrange(10000, 99999))},
        }
        docs.append(json.dumps(doc, separators=(",", ":")))
    return docs


def big_tokenizer(cache: Path) -> Tokenizer:
    """A 65,536-token nanochat tokenizer, trained once on the standard library's sources, then cached."""
    folder = cache / f"tokenizer-{BIG_VOCAB}"
    if (folder / "tokenizer.pkl").is_file():
        return Tokenizer.from_directory(folder)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" not in path.parts and size < TRAINING_BYTES:
            texts.append(path.read_text(errors="replace"))
            size += len(texts[-1])
    print(f"training a {BIG_VOCAB}-token tokenizer on {len(texts)} files of {stdlib}...", file=sys.stderr)
    tokenizer = Tokenizer.train_from_iterator(texts, BIG_VOCAB)
    tokenizer.save(folder)
    return tokenizer


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer: Tokenizer) -> None:
        import llguidance
        import llguidance.torch
        from llguidance.tiktoken import lltokenizer_from_encoding

        self.llg, self.fill = llguidance, llguidance.torch.fill_next_token_bitmask_par
        eos = tokenizer.encode_special("<|assistant_end|>")
        self.vocab = lltokenizer_from_encoding(tokenizer.encoding, eos_token=eos)
        self.executor = llguidance.LLExecutor()
        self.words = (tokenizer.vocab_size + 31) // 32

    def compile(self, schema: dict | None) -> Any:
        text = json.dumps(schema or {"type": "object"})
        grammar = self.llg.LLMatcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False})
        return self.llg.LLMatcher(self.vocab, grammar)

    def matchers(self, compiled: Any, count: int) -> list[Any]:
        return [compiled.deep_copy() for _ in range(count)]

    def fill_masks(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.fill(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def advance(self, matchers: list[Any], tokens: list[int]) -> None:
        for m, t in zip(matchers, tokens, strict=True):
            assert m.consume_token(t), m.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Tokenizer) -> None:
        import xgrammar

        self.xgr = xgrammar
        special = set(tokenizer.get_special_tokens().values())
        vocab = [b"" if i in special else tokenizer.id_to_token_bytes(i) for i in range(tokenizer.vocab_size)]
        eos = tokenizer.encode_special("<|assistant_end|>")
        info = xgrammar.TokenizerInfo(vocab, xgrammar.VocabType.RAW, stop_token_ids=[eos])
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher()
        self.words = (tokenizer.vocab_size + 31) // 32

    def compile(self, schema: dict | None) -> Any:
        if schema is None:
            return self.compiler.compile_builtin_json_grammar()
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":")
        )

    def matchers(self, compiled: Any, count: int) -> list[Any]:
        return [self.xgr.GrammarMatcher(compiled) for _ in range(count)]

    def fill_masks(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def advance(self, matchers: list[Any], tokens: list[int]) -> None:
        for m, t in zip(matchers, tokens, strict=True):
            assert m.accept_token(t)


LIBRARIES = {"llguidance": Llguidance, "xgrammar": Xgrammar}


def measure(lib: Any, tokenizer: Tokenizer, schema: dict | None, batch: int, rounds: int) -> dict[str, float]:
    """Compile, then write one document per row, timing the batched mask fill and the advance per step;
    `rounds` times over fresh matchers of the one compiled grammar (as the engine's cache copies it), the
    first round a warm-up; the median round's means."""
    start = time.perf_counter()
    compiled = lib.compile(schema)
    compile_s = time.perf_counter() - start
    rows = [tokenizer.encode(doc) for doc in documents(batch, seed=batch)]
    steps = min(len(r) for r in rows)
    bitmask = torch.zeros(batch, lib.words, dtype=torch.int32)
    fills, advances = [], []
    for _ in range(rounds + 1):
        matchers = lib.matchers(compiled, batch)
        fill = advance = 0.0
        for step in range(steps):
            tokens = [r[step] for r in rows]
            start = time.perf_counter()
            lib.fill_masks(matchers, bitmask)
            middle = time.perf_counter()
            lib.advance(matchers, tokens)
            fill += middle - start
            advance += time.perf_counter() - middle
            for i, t in enumerate(tokens):  # the mask allowed each row's token
                assert (bitmask[i, t // 32].item() >> (t % 32)) & 1, (lib.name, i, t)
        fills.append(fill / steps)
        advances.append(advance / steps)
    return {
        "compile_ms": round(compile_s * 1e3, 2),
        "mask_ms_per_step": round(statistics.median(fills[1:]) * 1e3, 3),
        "advance_ms_per_step": round(statistics.median(advances[1:]) * 1e3, 3),
        "first_round_mask_ms_per_step": round(fills[0] * 1e3, 3),
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up (median)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "nanochat-bench")
    args = parser.parse_args(argv)
    tokenizers = {
        "demo_2048": Tokenizer.from_directory(REPO_ROOT / "models" / "demo"),
        "nanochat_65536": big_tokenizer(args.cache),
    }
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "libraries": {},
    }
    for name, make in LIBRARIES.items():
        try:
            __import__(name)
        except ImportError:
            print(f"{name} is not installed: skipped", file=sys.stderr)
            continue
        per_lib: dict[str, Any] = {}
        for tok_name, tokenizer in tokenizers.items():
            start = time.perf_counter()
            lib = make(tokenizer)
            entry: dict[str, Any] = {
                "vocab": tokenizer.vocab_size,
                "tokenizer_ms": round((time.perf_counter() - start) * 1e3, 1),
            }
            for grammar, schema in (("json_schema", SCHEMA), ("json_object", None)):
                for batch in BATCHES:
                    entry[f"{grammar}_batch{batch}"] = measure(lib, tokenizer, schema, batch, args.rounds)
            per_lib[tok_name] = entry
        results["libraries"][name] = per_lib
    libs = results["libraries"]
    if len(libs) == 2:
        results["ratio_xgrammar_over_llguidance"] = {
            f"{tok}/{key}": round(
                libs["xgrammar"][tok][key]["mask_ms_per_step"]
                / libs["llguidance"][tok][key]["mask_ms_per_step"],
                2,
            )
            for tok in tokenizers
            for key in libs["llguidance"][tok]
            if isinstance(libs["llguidance"][tok][key], dict)
        }
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
