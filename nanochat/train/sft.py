"""Supervised fine-tuning on conversations: `nanochat train sft`.

Each conversation is rendered with nanochat's chat template (`Tokenizer.render_conversation`), and only
the tokens the assistant writes (its text, tool calls and <|assistant_end|>) are trained on; user turns,
tool outputs and padding are masked out (target -1). Batches are right-padded, so padding never influences
real tokens. Learning rates start at `init_lr_frac` of the base recipe and decay linearly to zero.
The result is a nanochat checkpoint (tokenizer copied in) that the engine serves as is.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.data.conversations import load_conversations
from nanochat.tokenizer import Tokenizer
from nanochat.train.common import autocast_context, save_training_state
from nanochat.train.config import ConfigError, require_at_least
from nanochat.train.distributed import DistContext, average_gradients, mean_across_ranks
from nanochat.train.optim import build_optimizers
from nanochat.train.tracking import RunTracker, progress

IGNORE = -1


@dataclass
class SFTConfig:
    checkpoint: str  # base model folder (nanochat layout)
    train: str  # conversations JSONL
    out: str  # run folder: checkpoint, metrics, report
    val: str = ""  # held-out conversations JSONL
    step: int = -1  # base checkpoint step (-1: latest)
    device_batch_size: int = 8
    num_epochs: int = 1
    num_iterations: int = 0  # 0: as many steps as num_epochs takes
    max_seq_len: int = 0  # 0: the model's sequence_len
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    weight_decay: float = 0.0
    init_lr_frac: float = 0.02
    eval_every: int = 50
    group_by_length: bool = True  # batch conversations of similar length together (less padding)
    seed: int = 42
    device: str = "auto"
    wandb_project: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        require_at_least(self, 1, ("device_batch_size", "num_epochs"))
        require_at_least(self, 0, ("num_iterations", "max_seq_len", "eval_every"))
        if not 0 < self.init_lr_frac <= 1:
            raise ConfigError(f"init_lr_frac must be in (0, 1], got {self.init_lr_frac}")


HELP = {
    "checkpoint": "base checkpoint folder to fine-tune",
    "train": "training conversations (JSONL, one {'messages': [...]} per line)",
    "val": "held-out conversations (JSONL) for validation loss",
    "out": "run folder for the SFT checkpoint, metrics and report",
    "init_lr_frac": "fraction of the base learning rates to start from (then linear decay to 0)",
    "group_by_length": "batch conversations of similar length together, so batches carry less padding "
    "(each epoch still sees every conversation once, batches in random order)",
}

# Conversations are sorted by length within windows of this many batches (then the batches are shuffled):
# wide enough to cut most of the padding, narrow enough that a batch still mixes sources.
LENGTH_GROUP_BATCHES = 50


def sft_example(tokenizer: Tokenizer, conversation: dict, max_len: int) -> tuple[list[int], list[int]]:
    """(inputs, targets) for one conversation; targets are -1 wherever the assistant does not write."""
    ids, mask = tokenizer.render_conversation(conversation, max_tokens=max_len + 1)
    targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:], strict=True)]
    return ids[:-1], targets


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device):
    """Right-pad to the longest example: inputs with `pad_id`, targets with -1."""
    width = max(len(x) for x, _ in examples)
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        inputs[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        targets[row, : len(y)] = torch.tensor(y, dtype=torch.long)
    return inputs.to(device), targets.to(device)


def epoch_batches(
    lengths: list[int], batch_size: int, rng: random.Random, group_by_length: bool = True
) -> list[list[int]]:
    """One epoch's batches of example indices: a shuffled order cut into full batches (a last partial
    batch is dropped). With `group_by_length`, each window of LENGTH_GROUP_BATCHES batches is sorted by
    length before it is cut, and the batches are shuffled again, so similar lengths share a batch."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * LENGTH_GROUP_BATCHES
        order = [
            i for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lengths.__getitem__)
        ]  # fmt: skip
    starts = range(0, len(order) - batch_size + 1, batch_size)
    batches = [order[start : start + batch_size] for start in starts]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def _masked_loss_sums(model, inputs, targets) -> tuple[float, int]:
    loss = model(inputs, targets, loss_reduction="sum")
    return loss.item(), int((targets != IGNORE).sum())


def train_sft(config: SFTConfig, ctx: DistContext) -> dict:
    torch.manual_seed(config.seed)
    loaded = load_checkpoint(
        config.checkpoint, step=None if config.step < 0 else config.step, device=ctx.device
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    max_len = config.max_seq_len or model.config.sequence_len
    if max_len > model.config.sequence_len * 10:
        raise ConfigError(f"max_seq_len {max_len} is past the model's rotary table")
    pad_id = tokenizer.encode_special("<|assistant_end|>")

    def prepare(path: str) -> list[tuple[list[int], list[int]]]:
        examples = [sft_example(tokenizer, c, max_len) for c in load_conversations(path)]
        return [e for e in examples if any(t != IGNORE for t in e[1])]  # truncation can drop every target

    train = prepare(config.train)
    val = prepare(config.val) if config.val else []
    if not train:
        raise ConfigError(f"{config.train}: no conversation has assistant tokens to train on")
    global_batch = config.device_batch_size * ctx.world_size
    steps_per_epoch = max(1, len(train) // global_batch)
    num_steps = config.num_iterations or steps_per_epoch * config.num_epochs

    optimizers = build_optimizers(
        model,
        unembedding_lr=config.unembedding_lr * config.init_lr_frac,
        embedding_lr=config.embedding_lr * config.init_lr_frac,
        matrix_lr=config.matrix_lr * config.init_lr_frac,
        weight_decay=config.weight_decay,
    )
    rng = random.Random(config.seed)

    lengths = [len(inputs) for inputs, _ in train]

    def batches():
        while True:
            for batch in epoch_batches(lengths, global_batch, rng, config.group_by_length):
                mine = batch[ctx.rank :: ctx.world_size]
                yield collate([train[i] for i in mine], pad_id, ctx.device)

    def validate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode(), autocast_context(ctx.device):
            for start in range(ctx.rank * config.device_batch_size, len(val), global_batch):
                inputs, targets = collate(val[start : start + config.device_batch_size], pad_id, ctx.device)
                loss_sum, n = _masked_loss_sums(model, inputs, targets)
                total, count = total + loss_sum, count + n
        model.train()
        total, count = mean_across_ranks(total, ctx), mean_across_ranks(count, ctx)
        return total / max(count, 1)

    out = Path(config.out)
    if ctx.is_main:
        tokenizer.save(out)  # beside the model, so `--checkpoint OUT` works on its own
    tracker = RunTracker(
        out,
        {
            **asdict(config),
            "model_config": model.config.to_dict(),
            "train_examples": len(train),
            "val_examples": len(val),
            "num_steps": num_steps,
        },
        wandb_project=config.wandb_project or None,
        enabled=ctx.is_main,
    )
    model.train()
    stream = batches()
    val_loss = None
    total_time = 0.0
    with tracker:
        for step in progress(
            range(num_steps + 1), total=num_steps + 1, desc="sft", enabled=config.progress and ctx.is_main
        ):
            last = step == num_steps
            if val and (last or (config.eval_every and step % config.eval_every == 0)):
                val_loss = validate()
                tracker.log(step, val_loss=val_loss)
            if last:
                break
            start = time.perf_counter()
            lr_mult = 1.0 - step / num_steps
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * lr_mult
            inputs, targets = next(stream)
            with autocast_context(ctx.device):
                loss = model(inputs, targets)
            loss.backward()
            average_gradients(model, ctx)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            total_time += seconds
            train_loss = mean_across_ranks(loss.item(), ctx)
            tokens = mean_across_ranks(float((targets != IGNORE).sum()), ctx) * ctx.world_size
            if not math.isfinite(train_loss):
                raise ConfigError(f"SFT loss became {train_loss} at step {step}; lower the learning rates")
            tracker.log(step + 1, train_loss=train_loss, lr_mult=lr_mult, tok_per_s=tokens / seconds)
        meta = {
            "step": num_steps,
            "val_loss": val_loss,
            "model_config": model.config.to_dict(),
            "user_config": asdict(config),
            "base_checkpoint": {"path": str(loaded.directory), "step": loaded.step},
            "loop_state": {"total_training_time": total_time},
        }
        save_training_state(out, num_steps, model, optimizers, meta, ctx)
        summary = {
            "steps": num_steps,
            "train_examples": len(train),
            "val_loss": val_loss,
            "training_seconds": round(total_time, 2),
        }
        tracker.summary(**summary)
    return summary
