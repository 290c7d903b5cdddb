"""The sampling controls of the batched sampler (nanochat/batching.py): penalties, logit bias and min_p,
vectorized over rows with different settings, and `n` choices that each sample their own first token."""

from __future__ import annotations

import pytest
import torch

from nanochat.backend import EngineError, SamplingParams
from nanochat.batching import MIN_TEMPERATURE, adjust_logits, sample_next_token
from nanochat.engine import Engine
from tests.nanochat.test_prefix_cache import run

VOCAB = 8


def reference_row(
    logits: torch.Tensor, p: SamplingParams, output: list[int], prompt: list[int]
) -> torch.Tensor:
    """One row's adjusted logits, written out token by token (the definitions, not the vectorized code)."""
    row = logits.clone().float()
    for token in set(prompt) | set(output):
        if p.repetition_penalty != 1.0:
            value = row[token].item()
            row[token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
    for token in set(output):
        row[token] -= p.frequency_penalty * output.count(token) + p.presence_penalty
    for token, bias in p.logit_bias:
        row[token] += bias
    return row


def test_mixed_rows_are_adjusted_each_by_its_own_settings() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, VOCAB) * 3
    rows = [
        (SamplingParams(), [1, 1, 2], [3, 4]),  # nothing asked: untouched
        (SamplingParams(frequency_penalty=0.5, presence_penalty=1.0), [1, 1, 2], [3]),
        (SamplingParams(repetition_penalty=1.5), [0, 5], [6, 7]),
        (SamplingParams(logit_bias=((2, 100.0), (3, -100.0))), [2], [2]),
        (SamplingParams(frequency_penalty=-1.0, repetition_penalty=0.5, logit_bias=((7, 2.5),)), [7, 7], [1]),
    ]
    params, outputs, prompts = zip(*rows, strict=True)
    adjusted = adjust_logits(logits, params, outputs, prompts)
    assert torch.equal(adjusted[0], logits[0])
    for i in range(1, len(rows)):
        expected = reference_row(logits[i], params[i], outputs[i], prompts[i])
        assert torch.allclose(adjusted[i], expected), i
        assert not torch.equal(adjusted[i], logits[i]), i
    assert adjusted[3].argmax().item() == 2 and adjusted[3].argmin().item() == 3


def test_rows_without_settings_cost_nothing() -> None:
    logits = torch.randn(3, VOCAB)
    assert adjust_logits(logits, [SamplingParams()] * 3, [[1]] * 3, [[2]] * 3) is logits


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    adjusted = adjust_logits(logits, [SamplingParams(repetition_penalty=2.0)], [[0]], [[1]])
    assert adjusted.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_a_tiny_repetition_penalty_keeps_the_logits_finite() -> None:
    """5e-324 is in (0, 2] but 0 in float32: dividing by it gave inf, and two infs a NaN distribution (a 500
    found by the fuzzer). The penalized logits are clamped: finite, the seen positive tokens far ahead."""
    logits = torch.tensor([[2.0, -2.0, 3.0, 1.0]])
    params = [SamplingParams(repetition_penalty=5e-324)]
    adjusted = adjust_logits(logits, params, [[0]], [[2, 1]])
    assert torch.isfinite(adjusted).all(), adjusted
    assert adjusted[0, 0] > 1e29 and adjusted[0, 2] > 1e29 and adjusted[0, 1] == 0.0 and adjusted[0, 3] == 1.0
    generator = torch.Generator().manual_seed(0)
    assert sample_next_token(adjusted, generator, temperature=MIN_TEMPERATURE).item() in (0, 2)
    assert sample_next_token(adjusted, generator, temperature=1.0).item() in (0, 2)


def test_min_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 400))
    g = torch.Generator().manual_seed(0)
    assert sample_next_token(logits, g, temperature=1.0, min_p=1.0).tolist() == [0] * 400  # greedy
    drawn = set(sample_next_token(logits, g, temperature=1.0, min_p=0.25).tolist())
    assert drawn == {0, 1, 2}  # 0.05 < 0.25 * 0.5 is gone; 0.15 >= 0.125 stays
    assert set(sample_next_token(logits, g, temperature=1.0).tolist()) == {0, 1, 2, 3}


def test_one_generator_per_row() -> None:
    logits = torch.zeros(2, 1000)  # uniform: rows with generators seeded alike draw alike
    generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
    first, second = sample_next_token(logits, generators).tolist()
    assert first == second
    assert first == sample_next_token(logits[:1], torch.Generator().manual_seed(5)).item()


@pytest.mark.parametrize(
    "params",
    [
        dict(presence_penalty=2.5),
        dict(frequency_penalty=-2.1),
        dict(repetition_penalty=0.0),
        dict(repetition_penalty=2.1),
        dict(min_p=1.5),
        dict(logit_bias=((1, 101.0),)),
        dict(logit_bias=((-1, 1.0),)),
    ],
)
def test_out_of_range_settings_are_refused(params: dict) -> None:
    with pytest.raises(EngineError):
        SamplingParams(**params)


@pytest.fixture
def engine(make_model, small_tokenizer) -> Engine:
    return Engine(make_model(), small_tokenizer, max_batch=8)


def test_each_choice_samples_its_own_first_token(engine: Engine) -> None:
    flat = SamplingParams(max_tokens=3, temperature=5.0, seed=11, n=8, ignore_eos=True)
    choices = run(engine, [1, 2, 3], flat)
    assert len({tokens[0] for tokens in choices}) > 1
    assert run(engine, [1, 2, 3], flat) == choices  # the seed repeats them
    for i in (0, 3, 7):  # choice i draws as a lone request seeded seed + i does
        alone = run(engine, [1, 2, 3], SamplingParams(max_tokens=1, temperature=5.0, seed=11 + i))
        assert alone[0][0] == choices[i][0]
    shared = run(engine, [1, 2, 3], SamplingParams(**{**flat.__dict__, "shared_first_token": True}))
    assert len({tokens[0] for tokens in shared}) == 1


def test_logit_bias_forces_and_bans_a_token_in_the_engine(engine: Engine) -> None:
    greedy = run(engine, [1, 2, 3], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))[0]
    forced = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logit_bias=((42, 100.0),))
    assert run(engine, [1, 2, 3], forced)[0] == [42] * 4
    banned = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logit_bias=((greedy[0], -100.0),))
    assert run(engine, [1, 2, 3], banned)[0][0] != greedy[0]


def test_token_ids_outside_the_vocabulary_are_refused(engine: Engine) -> None:
    vocab = engine.vocab_size
    for params in (SamplingParams(logit_bias=((vocab, 1.0),)), SamplingParams(stop_token_ids=(vocab,))):
        with pytest.raises(EngineError, match="outside the vocabulary"):
            engine.begin([1, 2], params)


def test_rows_with_and_without_controls_share_a_batch(engine: Engine) -> None:
    """A greedy and a sampled request decode as they do alone next to rows with penalties and biases."""
    plain = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=24, temperature=1.0, seed=4, ignore_eos=True)
    controlled = [
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logit_bias=((42, 100.0),)),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, frequency_penalty=2.0, n=2),
    ]
    jobs = [([1, 2, 3], plain), ([4, 5], sampled), ([1, 2, 3], controlled[0]), ([1, 2, 3], controlled[1])]
    alone = [run(engine, prompt, params) for prompt, params in jobs]
    requests = []
    for prompt, params in jobs:
        requests.append(engine.begin(prompt, params))
        while requests[-1].prefill_remaining:
            engine.prefill(requests[-1])
    while not all(r.done for r in requests):
        engine.decode_step()
    together = [[c.tokens for c in r.continuations] for r in requests]
    assert together == alone
    assert together[2] == [[42] * 24]
    assert len(set(together[0][0])) < 24  # greedy on random weights repeats itself
    assert together[3][0][0] == together[0][0][0]  # nothing generated yet: the penalty changes nothing
    assert len(set(together[3][0])) > len(set(together[0][0]))
