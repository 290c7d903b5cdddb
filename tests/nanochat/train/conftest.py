"""A tiny corpus for the training tests that run whole (small) trainings: shards + tokenizer as files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nanochat.data.shards import write_shards


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, small_tokenizer, words) -> tuple[Path, Path]:
    """Three shards of word soup (8 row groups each; the last is validation) and the tokenizer folder."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(96)]
    write_shards(docs, root / "shards", docs_per_shard=32, docs_per_row_group=4)
    small_tokenizer.save(root / "tokenizer")
    return root / "shards", root / "tokenizer"


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """The environment for a child Python that sees the same modules as this one (the checkout first)."""
    import os
    import sys

    root = Path(__file__).resolve().parents[3]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
