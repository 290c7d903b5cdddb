"""Models, tokenizers and checkpoints made by the tests themselves (no shared files needed)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "license",
    "grants",
    "freedom",
    "share",
    "change",
    "code",
    "model",
    "token",
]


@pytest.fixture(scope="session")
def words() -> list[str]:
    """The vocabulary of the word-soup texts the tests train on."""
    return list(WORDS)


@pytest.fixture(scope="session")
def small_tokenizer() -> Tokenizer:
    """A BPE tokenizer trained here with rustbpe on random word mixes plus some unicode."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) + " café 你好 🦀 12345" for _ in range(300)]
    return Tokenizer.train_from_iterator(texts, vocab_size=384)


def random_model(
    vocab_size: int,
    n_layer: int = 2,
    n_head: int = 4,
    n_kv_head: int = 4,
    n_embd: int = 64,
    sequence_len: int = 128,
    seed: int = 0,
) -> GPT:
    """A randomly initialised model whose every weight is non-zero (nanochat zero-inits the output
    projections and head, which would make attention irrelevant and all logits equal)."""
    config = GPTConfig(sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd)
    model = GPT(config)
    g = torch.Generator().manual_seed(seed)
    model.init_weights(g)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight") or name == "lm_head.weight":
            torch.nn.init.normal_(p, std=0.5 / p.shape[1] ** 0.5, generator=g)
    return model.eval()


@pytest.fixture
def make_model(small_tokenizer: Tokenizer) -> Callable[..., GPT]:
    def make(**kwargs) -> GPT:
        kwargs.setdefault("vocab_size", small_tokenizer.get_vocab_size())
        return random_model(**kwargs)

    return make


@pytest.fixture
def write_checkpoint(small_tokenizer: Tokenizer) -> Callable[..., Path]:
    """write_checkpoint(dir, model, step=10, tokenizer_dir=None) -> dir, in the nanochat layout."""

    def write(directory: Path, model: GPT, step: int = 10, tokenizer_dir: Path | None = None) -> Path:
        meta = {"step": step, "model_config": model.config.to_dict(), "user_config": {"made_by": "tests"}}
        save_checkpoint(directory, step, model.state_dict(), meta)
        small_tokenizer.save(tokenizer_dir or directory)
        return directory

    return write
