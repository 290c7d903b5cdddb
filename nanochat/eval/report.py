"""The evaluation report of a trained pair of models (base + chat): `nanochat eval report`.

One markdown file (and the same figures as JSON) that says whether the models are better than chance:
- base: validation bits per byte against a unigram baseline fit on the training shards, same targets;
- chat: the share of held-out prompts answered with text and then <|assistant_end|>, the identity score
  (the share of greedy replies to held-out "who are you" prompts that say "nanochat"), exact-match
  accuracy on synthetic arithmetic tasks that need the calculator tool (operands 1-100, and 2-3 digits),
  and a few sample replies;
- training: steps, tokens, time and tokens/s read from each run folder's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanochat.checkpoint import LoadedCheckpoint
from nanochat.data.conversations import load_conversations
from nanochat.data.synthetic import HELDOUT_IDENTITY_PROMPTS, HELDOUT_OTHER_PROMPTS, NAME, heldout_arithmetic
from nanochat.eval.bpb import shard_bpb
from nanochat.eval.chat_eval import (
    assistant_end_rate,
    generate_replies,
    mention_rate,
    results_table,
    run_chat_eval,
)
from nanochat.eval.tasks import Task
from nanochat.train.tracking import read_metrics

SAMPLE_PROMPTS = ("Hello! Who are you?", "What is your favorite food?", "Tell me a joke.")


def training_figures(run_dir: Path) -> dict[str, Any]:
    """Steps, tokens/s and time from a run folder's metrics.jsonl and latest meta (empty if absent)."""
    try:
        metrics = read_metrics(run_dir)
    except (OSError, ValueError):
        return {}
    speeds = [m["tok_per_s"] for m in metrics if m.get("tok_per_s")]
    losses = [m["train_loss"] for m in metrics if m.get("train_loss") is not None]
    figures: dict[str, Any] = {"steps": max((m["step"] for m in metrics if "step" in m), default=0)}
    if speeds:
        figures["median_tokens_per_second"] = round(sorted(speeds)[len(speeds) // 2], 1)
    if losses:
        figures["final_train_loss"] = round(losses[-1], 4)
    metas = sorted(Path(run_dir).glob("meta_*.json"))
    if metas:
        loop = json.loads(metas[-1].read_text()).get("loop_state") or {}
        if loop.get("total_training_time"):
            figures["training_seconds"] = round(loop["total_training_time"], 1)
    return figures


def evaluate_pair(
    base: LoadedCheckpoint,
    chat: LoadedCheckpoint,
    pretrain_dir: Path,
    conversations_path: Path,
    *,
    bpb_batch_size: int = 8,
    max_batches: int | None = None,
    arithmetic_questions: int = 50,
    reply_tokens: int = 64,
) -> dict[str, Any]:
    """Every figure of the report, as a dict."""
    bpb = shard_bpb(
        base.model, base.tokenizer, pretrain_dir, bpb_batch_size, max_batches=max_batches, unigram=True
    )
    return {
        "base": {"checkpoint": str(base.directory), "step": base.step, **bpb},
        "chat": evaluate_chat(
            chat, conversations_path, arithmetic_questions=arithmetic_questions, reply_tokens=reply_tokens
        ),
        "training": {"base": training_figures(base.directory), "chat": training_figures(chat.directory)},
    }


def evaluate_chat(
    chat: LoadedCheckpoint,
    conversations_path: Path,
    *,
    arithmetic_questions: int = 50,
    reply_tokens: int = 64,
) -> dict[str, Any]:
    """The chat model's figures of the report: assistant_end rate, identity score, arithmetic, samples."""
    held_out = load_conversations(conversations_path)
    end_rate = assistant_end_rate(chat.model, chat.tokenizer, held_out, max_tokens=reply_tokens)
    chat_tasks = run_chat_eval(
        chat.model, chat.tokenizer, heldout_arithmetic(arithmetic_questions), max_tokens=reply_tokens
    )
    identity, identity_replies = mention_rate(
        chat.model, chat.tokenizer, HELDOUT_IDENTITY_PROMPTS, NAME, max_tokens=reply_tokens
    )
    off_topic, off_topic_replies = mention_rate(
        chat.model, chat.tokenizer, HELDOUT_OTHER_PROMPTS, NAME, max_tokens=reply_tokens
    )
    prompts = [Task(kind="exact_match", prompt=p, answer="") for p in SAMPLE_PROMPTS]
    replies = generate_replies(chat.model, chat.tokenizer, prompts, max_tokens=reply_tokens)
    return {
        "checkpoint": str(chat.directory),
        "step": chat.step,
        "held_out_prompts": len(held_out),
        "assistant_end_rate": end_rate,
        "identity": _mentions(identity, HELDOUT_IDENTITY_PROMPTS, identity_replies),
        # The same word in replies to questions that are not about the assistant: lower is better.
        "off_topic_identity": _mentions(off_topic, HELDOUT_OTHER_PROMPTS, off_topic_replies),
        "tasks": chat_tasks,
        "samples": [{"prompt": p, "reply": r} for p, r in zip(SAMPLE_PROMPTS, replies, strict=True)],
    }


def _mentions(score: float, prompts: tuple[str, ...], replies: list[str]) -> dict[str, Any]:
    return {
        "score": score,
        "word": NAME,
        "prompts": len(prompts),
        "replies": [{"prompt": p, "reply": r} for p, r in zip(prompts, replies, strict=True)],
    }


def report_markdown(figures: dict[str, Any], title: str = "Model report") -> str:
    base, chat = figures["base"], figures["chat"]
    off_topic = chat["off_topic_identity"]
    lines = [f"# {title}", ""]
    lines += [
        "## Base model: validation bits per byte",
        "",
        "| model | val bpb |",
        "|---|---|",
        f"| base, step {base['step']} | {base['bpb']:.4f} |",
        f"| unigram baseline (fit on {base.get('unigram_fit_shards', '?')} training shards) | "
        f"{base['unigram_bpb']:.4f} |",
        "",
        f"{base['tokens']:,} target tokens of `{Path(base['val_shard']).name}`; lower is better.",
        "",
        "## Chat model",
        "",
        "| check | result |",
        "|---|---|",
        f"| replies with text, then `<|assistant_end|>` ({chat['held_out_prompts']} held-out prompts) | "
        f"{chat['assistant_end_rate']:.1%} |",
        f'| identity: greedy replies that say "{chat["identity"]["word"]}" '
        f"({chat['identity']['prompts']} held-out prompts) | {chat['identity']['score']:.1%} |",
        f'| off-topic: replies that say "{off_topic["word"]}" to questions not about it '
        f"({off_topic['prompts']} held-out prompts; lower is better) | {off_topic['score']:.1%} |",
        "",
        results_table(chat["tasks"]),
        "",
        "### Sample replies (greedy)",
        "",
    ]
    for sample in chat["samples"]:
        reply = sample["reply"].strip().replace("\n", " ") or "(empty)"
        lines.append(f"- **{sample['prompt']}** → {reply}")
    lines += ["", "### Identity replies (held-out prompts, greedy)", ""]
    for sample in chat["identity"]["replies"]:
        reply = sample["reply"].strip().replace("\n", " ") or "(empty)"
        lines.append(f"- **{sample['prompt']}** → {reply}")
    lines += ["", "### Replies to other questions (held-out prompts, greedy)", ""]
    for sample in off_topic["replies"]:
        reply = sample["reply"].strip().replace("\n", " ") or "(empty)"
        lines.append(f"- **{sample['prompt']}** → {reply}")
    lines += [
        "",
        "## Training",
        "",
        "| run | steps | tokens/s (median) | seconds | final train loss |",
        "|---|---|---|---|---|",
    ]
    for name, run in figures["training"].items():
        cells = [
            run.get(k, "")
            for k in ("steps", "median_tokens_per_second", "training_seconds", "final_train_loss")
        ]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(figures: dict[str, Any], out_dir: Path, title: str = "Model report") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    path = out_dir / "report.md"
    path.write_text(report_markdown(figures, title))
    return path
