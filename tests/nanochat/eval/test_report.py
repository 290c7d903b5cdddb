"""`nanochat eval report`: figures for a base + chat pair, and the markdown that presents them."""

from __future__ import annotations

import json
import random

import torch

from nanochat.cli import main
from nanochat.data.conversations import write_conversations
from nanochat.data.shards import write_shards
from nanochat.data.synthetic import HELDOUT_IDENTITY_PROMPTS, HELDOUT_OTHER_PROMPTS
from nanochat.train.base import BaseConfig, train_base
from nanochat.train.distributed import DistContext

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]


def test_report_on_a_trained_pair(tmp_path, small_tokenizer, make_model, write_checkpoint, capsys):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(40)]
    write_shards(docs, tmp_path / "shards", docs_per_shard=10, docs_per_row_group=5)
    small_tokenizer.save(tmp_path / "tok")
    config = BaseConfig(
        data=str(tmp_path / "shards"), tokenizer=str(tmp_path / "tok"), out=str(tmp_path / "base"), depth=1,
        max_seq_len=32, device_batch_size=4, num_iterations=20, eval_every=0, eval_batches=2, device="cpu",
        progress=False,
    )  # fmt: skip
    train_base(config, DistContext(0, 1, 0, torch.device("cpu")))
    chat = write_checkpoint(tmp_path / "chat", make_model(sequence_len=64))
    convs = [{"messages": [{"role": "user", "content": "fox"}, {"role": "assistant", "content": "dog"}]}] * 4
    write_conversations(tmp_path / "held.jsonl", convs)

    code = main([
        "eval", "report", "--base", str(tmp_path / "base"), "--chat", str(chat),
        "--data", str(tmp_path / "shards"), "--conversations", str(tmp_path / "held.jsonl"),
        "--out", str(tmp_path / "report"), "--arithmetic", "3", "--max-batches", "2",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    figures = json.loads((tmp_path / "report" / "report.json").read_text())
    assert figures["base"]["bpb"] < figures["base"]["unigram_bpb"]  # 20 steps on 8 words beat unigram
    assert figures["base"]["batches"] == 2 and figures["chat"]["held_out_prompts"] == 4
    assert 0.0 <= figures["chat"]["assistant_end_rate"] <= 1.0
    assert figures["chat"]["tasks"]["arithmetic (calculator tool)"]["n"] == 3
    assert figures["chat"]["tasks"]["arithmetic, 2-3 digit operands (calculator tool)"]["n"] == 3
    identity = figures["chat"]["identity"]
    assert identity["word"] == "nanochat" and identity["prompts"] == len(HELDOUT_IDENTITY_PROMPTS) >= 20
    assert 0.0 <= identity["score"] <= 1.0 and len(identity["replies"]) == identity["prompts"]
    assert (
        figures["training"]["base"]["steps"] == 20
        and figures["training"]["base"]["median_tokens_per_second"] > 0
    )
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"| {figures['base']['bpb']:.4f} |" in markdown
    assert f"{figures['base']['unigram_bpb']:.4f}" in markdown
    off_topic = figures["chat"]["off_topic_identity"]
    assert off_topic["prompts"] == len(off_topic["replies"]) == len(HELDOUT_OTHER_PROMPTS) >= 20
    assert 0.0 <= off_topic["score"] <= 1.0
    assert f"lower is better) | {off_topic['score']:.1%} |" in markdown
    # the sample, identity and off-topic replies
    assert markdown.count("- **") == 3 + len(HELDOUT_IDENTITY_PROMPTS) + len(HELDOUT_OTHER_PROMPTS)
    assert f"held-out prompts) | {identity['score']:.1%} |" in markdown
    assert "base val bpb" in capsys.readouterr().out
