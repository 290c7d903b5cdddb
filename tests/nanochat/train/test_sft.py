"""SFT: exactly the assistant's tokens are trained, padding is inert, the result serves as a chat model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.data.conversations import ConversationDataError, write_conversations
from nanochat.engine import Engine
from nanochat.train.config import ConfigError
from nanochat.train.distributed import DistContext
from nanochat.train.sft import IGNORE, SFTConfig, collate, epoch_batches, sft_example, train_sft
from nanochat.train.tracking import read_metrics

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_targets_are_exactly_the_assistant_tokens(small_tokenizer):
    tok = small_tokenizer
    sp = tok.encode_special
    conversation = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "fox?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "the dog"},
                    {"type": "python", "text": "2*3"},
                    {"type": "python_output", "text": "6"},
                    {"type": "text", "text": " ok"},
                ],
            },
            {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "lazy"},
        ]
    }
    # built by hand from the chat template: what the assistant writes is trained, nothing else
    trained = [
        *tok.encode("the dog"), sp("<|python_start|>"), *tok.encode("2*3"), sp("<|python_end|>"),
        *tok.encode(" ok"), sp("<|assistant_end|>"), *tok.encode("lazy"), sp("<|assistant_end|>"),
    ]  # fmt: skip
    untrained = [
        sp("<|user_start|>"), *tok.encode("be brief\n\nfox?"), sp("<|user_end|>"), sp("<|assistant_start|>"),
        sp("<|output_start|>"), *tok.encode("6"), sp("<|output_end|>"),
        sp("<|user_start|>"), *tok.encode("and?"), sp("<|user_end|>"), sp("<|assistant_start|>"),
    ]  # fmt: skip
    inputs, targets = sft_example(tok, conversation, max_len=256)
    assert inputs[0] == tok.get_bos_token_id()
    assert [t for t in targets if t != IGNORE] == trained
    assert len(targets) == len(inputs) == len(trained) + len(untrained)
    ids, _ = tok.render_conversation(conversation)
    assert inputs == ids[:-1]
    assert all(t in (IGNORE, ids[i + 1]) for i, t in enumerate(targets))  # targets are the next tokens


def test_truncation_and_padding(small_tokenizer, make_model):
    tok = small_tokenizer
    long = {"messages": [{"role": "user", "content": "fox " * 50}, {"role": "assistant", "content": "dog"}]}
    inputs, targets = sft_example(tok, long, max_len=16)
    assert len(inputs) == 16 and all(t == IGNORE for t in targets)  # the answer was cut off
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "dog"}]}
    a, b = sft_example(tok, short, 64), sft_example(tok, long, 64)
    x, y = collate([a, b], pad_id=tok.encode_special("<|assistant_end|>"), device=torch.device("cpu"))
    assert x.shape == y.shape == (2, len(b[0]))
    assert (y[0, len(a[1]) :] == IGNORE).all()
    # right padding does not change the loss of the real tokens
    model = make_model()
    alone = model(torch.tensor([a[0]]), torch.tensor([a[1]]), loss_reduction="sum")
    padded = model(x[:1], y[:1], loss_reduction="sum")
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


@pytest.fixture
def chat_data(tmp_path):
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]

    def conversation():
        question = " ".join(rng.choice(words) for _ in range(3))
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "dog"}]}

    write_conversations(tmp_path / "train.jsonl", [conversation() for _ in range(64)])
    write_conversations(tmp_path / "val.jsonl", [conversation() for _ in range(8)])
    return tmp_path


def test_sft_trains_and_the_result_chats(make_model, write_checkpoint, chat_data, tmp_path):
    base = write_checkpoint(tmp_path / "base", make_model(sequence_len=64))
    config = SFTConfig(
        checkpoint=str(base), train=str(chat_data / "train.jsonl"), val=str(chat_data / "val.jsonl"),
        out=str(tmp_path / "sft"), device_batch_size=8, num_epochs=3, init_lr_frac=0.5, eval_every=8,
        device="cpu", progress=False,
    )  # fmt: skip
    summary = train_sft(config, CPU)
    assert summary["steps"] == 24
    val = [m["val_loss"] for m in read_metrics(tmp_path / "sft") if "val_loss" in m]
    assert val[-1] < val[0] / 4, val  # one fixed answer is easy to learn
    loaded = load_checkpoint(tmp_path / "sft")
    assert loaded.step == 24
    meta = json.loads((tmp_path / "sft" / "meta_000024.json").read_text())
    assert meta["base_checkpoint"]["step"] == 10 and meta["val_loss"] == pytest.approx(val[-1])
    prompt = loaded.tokenizer.render_for_completion(
        {"messages": [{"role": "user", "content": "lazy fox"}, {"role": "assistant", "content": ""}]}
    )
    engine = Engine(loaded.model, loaded.tokenizer)
    tokens = [col[0] for col, _ in engine.generate(prompt, max_tokens=8, temperature=0.0)]
    assert loaded.tokenizer.decode(tokens) == "dog<|assistant_end|>"


def test_bad_sft_inputs(make_model, write_checkpoint, chat_data, tmp_path):
    base = write_checkpoint(tmp_path / "base", make_model(sequence_len=64))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    config = SFTConfig(
        checkpoint=str(base), train=str(bad), out=str(tmp_path / "o"), device="cpu", progress=False
    )
    with pytest.raises(ConversationDataError, match=r"bad.jsonl:1:"):
        train_sft(config, CPU)
    only_users = tmp_path / "long.jsonl"
    write_conversations(
        only_users,
        [{"messages": [{"role": "user", "content": "fox " * 80}, {"role": "assistant", "content": "dog"}]}],
    )
    config = SFTConfig(checkpoint=str(base), train=str(only_users), out=str(tmp_path / "o"), device="cpu")
    with pytest.raises(ConfigError, match="no conversation has assistant tokens"):
        train_sft(config, CPU)
    with pytest.raises(ConfigError, match="init_lr_frac"):
        SFTConfig(checkpoint="x", train="y", out="z", init_lr_frac=0)


def _padded(batches, lengths):
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def test_length_grouped_batches_cover_the_epoch_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.choice((12, 20, 30, 256)) if i % 9 == 0 else rng.randint(10, 40) for i in range(5000)]
    plain = epoch_batches(lengths, 32, random.Random(1), group_by_length=False)
    grouped = epoch_batches(lengths, 32, random.Random(1), group_by_length=True)
    for batches in (plain, grouped):
        seen = [i for batch in batches for i in batch]
        assert len(seen) == len(set(seen)) == 5000 // 32 * 32  # each example at most once, full batches only
        assert all(len(batch) == 32 for batch in batches)
    assert _padded(grouped, lengths) < 0.6 * _padded(plain, lengths)
    # the batches come in random order, not shortest first
    maxima = [max(lengths[i] for i in batch) for batch in grouped]
    assert maxima != sorted(maxima)
    assert epoch_batches(lengths, 32, random.Random(1)) == grouped  # the same seed, the same epoch
