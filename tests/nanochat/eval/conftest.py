"""Programmed models for the evaluation tests: real GPTs whose greedy output is known in advance."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer


def bigram_model(vocab_size: int, transitions: Mapping[int, int], sequence_len: int = 256) -> GPT:
    """A real GPT whose next-token argmax is transitions[last token] (token 0 for tokens not listed).

    Every block is the identity (zero output projections), the embedding is one-hot, so the final
    hidden state of token i is sqrt(C)·e_i, and the head maps e_i to a logit of ~13 for transitions[i]
    and 0 for every other token. It runs through the real forward, KV cache and engine.
    """
    n_embd = vocab_size + vocab_size % 2  # one dimension per token, even for rotary
    model = GPT(GPTConfig(sequence_len, vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=n_embd))
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        model.transformer.wte.weight.copy_(torch.eye(vocab_size, n_embd))
        model.lm_head.weight.zero_()
        for current, following in transitions.items():
            model.lm_head.weight[following, current] = 1.0
    return model.eval()


@pytest.fixture
def scripted(small_tokenizer: Tokenizer) -> Callable[..., GPT]:
    """scripted(chain, ...) -> a bigram model of the small tokenizer following each chain of tokens.

    A chain is a list of special-token names and plain strings (each must be one token), e.g.
    ["<|assistant_start|>", "x", "<|assistant_end|>"]: after each element the model writes the next.
    """

    def token(item: str) -> int:
        if item.startswith("<|"):
            return small_tokenizer.encode_special(item)
        ids = small_tokenizer.encode(item)
        assert len(ids) == 1, f"{item!r} is {len(ids)} tokens"
        return ids[0]

    def build(*chains: list[str]) -> GPT:
        transitions = {}
        for chain in chains:
            ids = [token(item) for item in chain]
            transitions.update(itertools.pairwise(ids))
        return bigram_model(small_tokenizer.get_vocab_size(), transitions)

    return build
