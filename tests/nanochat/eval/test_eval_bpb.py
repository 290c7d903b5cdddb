"""Bits per byte: against a hand computation, a uniform model, the exclusion rules, the unigram baseline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.eval import EvalError
from nanochat.eval.bpb import evaluate_bpb, unigram_bpb


def random_batches(vocab_size: int, specials: list[int], shapes=((2, 12), (3, 7)), seed: int = 0):
    """(inputs, targets) batches of random ids, with some special-token and -1 targets mixed in."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b, t in shapes:
        inputs = torch.randint(0, vocab_size, (b, t), generator=g)
        targets = torch.randint(0, vocab_size, (b, t), generator=g)
        targets[0, 1] = specials[0]
        targets[-1, -1] = specials[-1]
        targets[0, 3] = -1
        batches.append((inputs, targets))
    return batches


def hand_bpb(model, batches, token_bytes) -> float:
    """The definition, one target at a time."""
    nats, num_bytes = 0.0, 0
    for inputs, targets in batches:
        with torch.no_grad():
            log_probs = F.log_softmax(model(inputs).double(), dim=-1)
        for b in range(targets.size(0)):
            for t in range(targets.size(1)):
                target = int(targets[b, t])
                if target < 0 or int(token_bytes[target]) == 0:
                    continue
                nats -= float(log_probs[b, t, target])
                num_bytes += int(token_bytes[target])
    return nats / (math.log(2) * num_bytes)


def specials_of(tokenizer) -> list[int]:
    return sorted(tokenizer.get_special_tokens().values())


def test_matches_the_hand_computation(make_model, small_tokenizer):
    model = make_model()
    token_bytes = small_tokenizer.token_bytes
    batches = random_batches(model.config.vocab_size, specials_of(small_tokenizer))
    assert evaluate_bpb(model, batches, token_bytes) == pytest.approx(
        hand_bpb(model, batches, token_bytes), 1e-6
    )


def test_uniform_logits_give_log2_vocab_times_tokens_per_byte(make_model, small_tokenizer):
    model = make_model()
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: the uniform distribution
    token_bytes = small_tokenizer.token_bytes
    batches = random_batches(model.config.vocab_size, specials_of(small_tokenizer))
    targets = torch.cat([t.reshape(-1) for _, t in batches])
    counted = targets[(targets >= 0)]
    counted = counted[token_bytes[counted] > 0]
    vocab = model.config.vocab_size
    expected = math.log2(vocab) * counted.numel() / int(token_bytes[counted].sum())
    assert evaluate_bpb(model, batches, token_bytes) == pytest.approx(expected, rel=1e-6)


def test_ignored_and_special_targets_count_neither_loss_nor_bytes(make_model, small_tokenizer):
    model = make_model()
    token_bytes = small_tokenizer.token_bytes
    specials = specials_of(small_tokenizer)
    batches = random_batches(model.config.vocab_size, specials)
    as_ignored = []  # the same batches with every special target turned into -1
    for inputs, targets in batches:
        special = torch.isin(targets, torch.tensor(specials))
        assert special.any() and (targets == -1).any()
        as_ignored.append((inputs, targets.masked_fill(special, -1)))
    assert evaluate_bpb(model, batches, token_bytes) == pytest.approx(
        evaluate_bpb(model, as_ignored, token_bytes), rel=1e-9
    )
    # and the rule matters: counting the special targets as 1-byte text changes the result
    counted_bytes = token_bytes.clone()
    counted_bytes[specials] = 1
    assert evaluate_bpb(model, batches, counted_bytes) != pytest.approx(
        evaluate_bpb(model, batches, token_bytes), rel=1e-3
    )


def test_nothing_to_count_is_an_error(make_model, small_tokenizer):
    model = make_model()
    bos = small_tokenizer.get_bos_token_id()
    only_ignored = [(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[-1, bos, -1, bos]]))]
    with pytest.raises(EvalError, match="no target token"):
        evaluate_bpb(model, only_ignored, small_tokenizer.token_bytes)
    with pytest.raises(EvalError, match="no target token"):
        evaluate_bpb(model, [], small_tokenizer.token_bytes)


def test_vocabulary_mismatch_is_an_error(make_model, small_tokenizer):
    with pytest.raises(EvalError, match="token_bytes has 10 entries"):
        evaluate_bpb(make_model(), [], torch.ones(10, dtype=torch.int32))


def test_runs_in_eval_mode_and_inference_mode_then_restores_the_mode(make_model, small_tokenizer):
    model = make_model().train()
    seen = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, torch.is_inference_mode_enabled()))
    )
    batches = random_batches(model.config.vocab_size, specials_of(small_tokenizer), shapes=((1, 5),))
    evaluate_bpb(model, batches, small_tokenizer.token_bytes)
    assert seen == [(False, True)]
    assert model.training


def test_sums_across_ranks_under_torch_distributed(make_model, small_tokenizer, tmp_path):
    import torch.distributed as dist

    model = make_model()
    batches = random_batches(model.config.vocab_size, specials_of(small_tokenizer))
    alone = evaluate_bpb(model, batches, small_tokenizer.token_bytes)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert evaluate_bpb(model, batches, small_tokenizer.token_bytes) == pytest.approx(alone, rel=1e-12)
    finally:
        dist.destroy_process_group()


# ---- unigram baseline ---------------------------------------------------------------------------------
def test_unigram_baseline_equals_its_closed_form():
    # vocabulary of 4: token 3 is special (0 bytes); train counts 0:2, 1:1, 2:3, 3:1 (N = 7)
    token_bytes = torch.tensor([1, 2, 3, 0], dtype=torch.int32)
    train = [0, 2, 1, 2, 0, 2, 3]
    val = [2, 3, 0, 1, -1, 2]
    p = {t: (c + 0.5) / (7 + 0.5 * 4) for t, c in {0: 2, 1: 1, 2: 3, 3: 1}.items()}
    bits = -(2 * math.log2(p[2]) + math.log2(p[0]) + math.log2(p[1]))  # token 3 and -1 not scored
    expected = bits / (3 + 1 + 2 + 3)
    assert unigram_bpb(train, val, token_bytes, 4, smoothing=0.5) == pytest.approx(expected, rel=1e-12)
    as_tensors = unigram_bpb(torch.tensor(train), torch.tensor([val]), token_bytes, 4, smoothing=0.5)
    assert as_tensors == pytest.approx(expected, rel=1e-12)
    chunks = (torch.tensor(part) for part in (train[:3], train[3:]))  # a stream, counted chunk by chunk
    assert unigram_bpb(chunks, val, token_bytes, 4, smoothing=0.5) == pytest.approx(expected, rel=1e-12)


def test_unigram_baseline_of_uniform_counts_is_log2_vocab_per_byte():
    token_bytes = torch.tensor([2, 2, 2, 2, 2, 2, 2, 2], dtype=torch.int32)
    train = list(range(8)) * 5
    assert unigram_bpb(train, [1, 5, 7], token_bytes, 8) == pytest.approx(3 / 2)


def test_unigram_baseline_rejects_bad_arguments():
    token_bytes = torch.ones(4, dtype=torch.int32)
    with pytest.raises(EvalError, match="smoothing must be > 0"):
        unigram_bpb([0], [1], token_bytes, 4, smoothing=0)
    with pytest.raises(EvalError, match="outside the vocabulary"):
        unigram_bpb([0, 4], [1], token_bytes, 4)
    with pytest.raises(EvalError, match="token_bytes has 4 entries"):
        unigram_bpb([0], [1], token_bytes, 5)
    with pytest.raises(EvalError, match="no text bytes"):
        unigram_bpb([0], [-1], token_bytes, 4)
