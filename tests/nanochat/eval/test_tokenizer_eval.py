"""Tokenizer compression: bytes per token of our tokenizers, and tiktoken baselines that cannot load here."""

from __future__ import annotations

import random
import threading

import pytest
import tiktoken

from nanochat.eval import EvalError
from nanochat.eval.tokenizer_eval import compression_report, compression_table, load_tiktoken_encoding
from nanochat.tokenizer import Tokenizer

WORDS = ["the", "license", "grants", "freedom", "to", "share", "and", "change", "the", "code", "of", "this"]


def corpus(seed: int, docs: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(30)) + f" version {rng.randint(1, 99)}."
        for _ in range(docs)
    ]


@pytest.fixture(scope="module")
def tokenizers() -> tuple[Tokenizer, Tokenizer]:
    """(small vocab, large vocab) trained on the same text."""
    texts = corpus(0)
    return Tokenizer.train_from_iterator(texts, 280), Tokenizer.train_from_iterator(texts, 600)


@pytest.fixture
def offline_tiktoken(tmp_path, monkeypatch):
    """An empty tiktoken cache: loading gpt2 or cl100k_base must fetch the BPE file, which fails here."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded earlier in this process


def test_bigger_vocab_compresses_in_domain_text_better(tokenizers):
    small, large = tokenizers
    texts = {"in-domain": "\n".join(corpus(1, docs=20)), "other": "Ünïcödé text 12345 and some words"}
    report = compression_report(large, texts, baselines=(), previous=small)
    ours, previous = report["encoders"]["ours"], report["encoders"]["previous"]
    assert report["bytes"] == {name: len(text.encode()) for name, text in texts.items()}
    for name, text in texts.items():
        assert ours["tokens"][name] == len(large.encode(text))
        assert previous["tokens"][name] == len(small.encode(text))
        assert ours["bytes_per_token"][name] == report["bytes"][name] / ours["tokens"][name]
    assert ours["bytes_per_token"]["in-domain"] > 1.2 * previous["bytes_per_token"]["in-domain"]
    assert (ours["vocab_size"], previous["vocab_size"]) == (large.vocab_size, small.vocab_size)
    table = compression_table(report)
    header, _, *rows = table.splitlines()[:4]
    assert (
        header == f"| text | bytes | ours (vocab {large.vocab_size}) | previous (vocab {small.vocab_size}) |"
    )
    in_domain = ours["bytes_per_token"]["in-domain"]
    assert rows[0].startswith(f"| in-domain | {report['bytes']['in-domain']} | {in_domain:.3f} |")


def test_unavailable_baselines_are_reported_with_the_reason(tokenizers, offline_tiktoken):
    report = compression_report(tokenizers[0], {"t": "the code"}, load_timeout_s=10)
    for name in ("gpt2", "cl100k_base"):
        baseline = report["encoders"][name]
        assert baseline["available"] is False and baseline["tokens"] == {}
        assert name in baseline["reason"] and "tiktoken" in baseline["reason"]
    assert report["encoders"]["ours"]["available"] is True
    table = compression_table(report)
    assert "| t | 8 | " in table and table.count("n/a") == 2
    assert "- gpt2: unavailable (" in table and "- cl100k_base: unavailable (" in table


def test_an_available_baseline_is_measured_with_plain_text_encoding(tokenizers, monkeypatch):
    small, large = tokenizers
    # stands in for the real gpt2 file, which cannot be downloaded here
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: large._encoding)
    text = "the code <|bos|> of this model"
    report = compression_report(small, {"t": text}, baselines=("gpt2",))
    assert report["encoders"]["gpt2"]["available"] is True
    assert report["encoders"]["gpt2"]["tokens"]["t"] == len(large.encode(text))
    assert report["encoders"]["gpt2"]["vocab_size"] == large.vocab_size


def test_a_hanging_download_times_out(monkeypatch):
    """The load gives up while the fetch still hangs: the fetch has not returned when the load has."""
    release, fetch_returned = threading.Event(), threading.Event()

    def hang(name):
        release.wait(60)  # bounded, so that a load that waits for the fetch fails instead of hanging
        fetch_returned.set()

    monkeypatch.setattr(tiktoken, "get_encoding", hang)
    try:
        encoding, reason = load_tiktoken_encoding("gpt2", timeout_s=0.2)
        assert not fetch_returned.is_set()
    finally:
        release.set()
    assert encoding is None and "took longer than 0.2s" in reason


def test_unknown_baseline_names_and_empty_texts(tokenizers):
    encoding, reason = load_tiktoken_encoding("gpt-17", timeout_s=1)
    assert encoding is None and "tiktoken has no encoding 'gpt-17'" in reason and "cl100k_base" in reason
    with pytest.raises(EvalError, match="text 'blank' is empty"):
        compression_report(tokenizers[0], {"blank": ""}, baselines=())
    with pytest.raises(EvalError, match="at least one text"):
        compression_report(tokenizers[0], {}, baselines=())
