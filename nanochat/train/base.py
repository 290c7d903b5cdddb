"""Base pretraining: `nanochat train base` (one process, or `torchrun --nproc_per_node=N` for DDP).

The model is sized by one knob, `depth` (width 64·depth, heads of 128), as nanochat does. Muon trains the
transformer's matrices, AdamW the embedding and head; learning rates follow a warmup / constant / warmdown
schedule. Each optimizer step accumulates gradients over micro-batches until `total_batch_size` tokens
(across all ranks) have been seen. Validation reports bits per byte on the last shard. Checkpoints (every
`save_every` steps and at the end) hold everything needed for an exact resume (`--resume true`); they are
written from a background thread, pruned to the last K and the best, and mirrored to a bucket on request
(nanochat/train/checkpoint_writer.py, gcs.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nanochat.data.shards import split_shards
from nanochat.eval.bpb import evaluate_bpb
from nanochat.gpt import GPT, GPTConfig, meta_model
from nanochat.tokenizer import Tokenizer
from nanochat.train.checkpoint_writer import CheckpointWriter
from nanochat.train.common import (
    autocast_context,
    fetch_from_bucket,
    flops_per_token,
    load_training_state,
    peak_flops,
    save_training_state,
)
from nanochat.train.config import ConfigError, require_at_least
from nanochat.train.dataloader import TokenDataLoader
from nanochat.train.distributed import DistContext, average_gradients, mean_across_ranks
from nanochat.train.gcs import parse_bucket_url
from nanochat.train.optim import apply_schedule, build_optimizers
from nanochat.train.tracking import RunTracker, progress


@dataclass
class BaseConfig:
    data: str  # folder of parquet shards (the last one is validation)
    tokenizer: str  # folder with tokenizer.pkl
    out: str  # run folder: checkpoints, config, metrics, report
    depth: int = 4
    max_seq_len: int = 256
    device_batch_size: int = 8
    total_batch_size: int = 0  # tokens per optimizer step; 0 = one micro-batch per rank
    num_iterations: int = 100
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 0  # checkpoints kept besides the best (0 = all)
    keep_best: bool = True  # also keep the step with the lowest val_bpb
    async_save: bool = True  # write checkpoints from a background thread
    bucket: str = ""  # gs://BUCKET/PREFIX: mirror checkpoints there, resume from there
    seed: int = 1234
    device: str = "auto"
    compile: bool = False
    resume: bool = False
    wandb_project: str = ""
    progress: bool = True
    run_name: str = field(default="base")

    def __post_init__(self) -> None:
        require_at_least(
            self, 1, ("depth", "max_seq_len", "device_batch_size", "num_iterations", "eval_batches")
        )
        require_at_least(self, 0, ("total_batch_size", "eval_every", "save_every", "keep_last"))
        if self.bucket:
            parse_bucket_url(self.bucket)


HELP = {
    "data": "folder of parquet shards with a text column",
    "tokenizer": "tokenizer folder (tokenizer.pkl)",
    "out": "run folder for checkpoints, metrics and report",
    "depth": "transformer layers; width = 64 x depth",
    "total_batch_size": "tokens per optimizer step across ranks (0: one micro-batch per rank)",
    "save_every": "checkpoint every N steps (0: only the final one)",
    "resume": "continue exactly from the latest checkpoint in --out (or --bucket, when --out has none)",
    "keep_last": "keep the newest N checkpoints (0: all); the best by val_bpb is kept too with --keep-best",
    "keep_best": "keep the checkpoint with the lowest val_bpb whatever --keep-last says",
    "async_save": "write checkpoints from a background thread (the step waits only for a CPU copy)",
    "bucket": "gs://BUCKET/PREFIX: upload each checkpoint there and resume from it (needs the gcs extra)",
    "wandb_project": "log to Weights & Biases (WANDB_MODE=offline works without network)",
}


def grad_accum_steps(config: BaseConfig, world_size: int) -> int:
    per_step = config.device_batch_size * config.max_seq_len * world_size
    total = config.total_batch_size or per_step
    if total % per_step:
        raise ConfigError(
            f"total_batch_size {total} must be a multiple of device_batch_size x max_seq_len x processes "
            f"= {per_step}"
        )
    return total // per_step


def build_model(config: BaseConfig, vocab_size: int, device: torch.device) -> GPT:
    model_config = GPTConfig.for_depth(config.depth, vocab_size, config.max_seq_len)
    model = meta_model(model_config)
    model.to_empty(device=device)
    model.init_weights(
        torch.Generator(device=device).manual_seed(config.seed) if device.type == "cpu" else None
    )
    return model


def train_base(
    config: BaseConfig,
    ctx: DistContext,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Train; returns the summary. `batches` replaces the shard loader (tests feed exact batches)."""
    torch.manual_seed(config.seed)
    out = Path(config.out)
    tokenizer = Tokenizer.from_directory(config.tokenizer)
    train_shards, val_shards = split_shards(config.data)
    model = build_model(config, tokenizer.get_vocab_size(), ctx.device)
    optimizers = build_optimizers(
        model,
        unembedding_lr=config.unembedding_lr,
        embedding_lr=config.embedding_lr,
        matrix_lr=config.matrix_lr,
        weight_decay=config.weight_decay,
    )
    accum = grad_accum_steps(config, ctx.world_size)
    tokens_per_step = config.device_batch_size * config.max_seq_len * ctx.world_size * accum

    start_step, loop_state, loader_state = 0, {}, None
    if config.resume:
        if config.bucket:
            fetch_from_bucket(out, config.bucket, ctx)
        start_step, meta, loader_state = load_training_state(out, model, optimizers, ctx)
        loop_state = meta.get("loop_state", {})
    loader = None
    if batches is None:
        loader = TokenDataLoader(
            train_shards,
            tokenizer,
            config.device_batch_size,
            config.max_seq_len,
            ctx.rank,
            ctx.world_size,
            ctx.device,
            state=loader_state,
        )
        batches = iter(loader)
    train_model = torch.compile(model) if config.compile else model
    token_bytes = tokenizer.token_bytes.to(ctx.device)
    flops = flops_per_token(model)
    peak = peak_flops(ctx.device)

    def validate() -> float:
        val = TokenDataLoader(
            val_shards, tokenizer, config.device_batch_size, config.max_seq_len, device=ctx.device, loop=False
        )
        val_batches = (b for _, b in zip(range(config.eval_batches), val, strict=False))
        with autocast_context(ctx.device):
            return evaluate_bpb(model, val_batches, token_bytes)

    if ctx.is_main:
        tokenizer.save(out)  # beside the model, so `--checkpoint OUT` works on its own
    tracker = RunTracker(
        out,
        {**asdict(config), "model_config": model.config.to_dict(), "parameters": model.num_parameters()},
        wandb_project=config.wandb_project or None,
        enabled=ctx.is_main,
    )
    smooth_loss = loop_state.get("smooth_train_loss", 0.0)
    min_val_bpb = loop_state.get("min_val_bpb", math.inf)
    total_time = loop_state.get("total_training_time", 0.0)
    session_time = 0.0  # this process's training time (total_time includes the runs resumed from)
    val_bpb = None
    writer = CheckpointWriter(
        out,
        keep_last=config.keep_last,
        keep_best=config.keep_best,
        background=config.async_save,
        bucket=config.bucket,
        rank=ctx.rank,
    )
    with tracker, writer:
        steps = progress(
            range(start_step, config.num_iterations + 1),
            total=config.num_iterations + 1 - start_step,
            desc="base",
            enabled=config.progress and ctx.is_main,
        )
        for step in steps:
            last = step == config.num_iterations
            if last or (config.eval_every and step % config.eval_every == 0):
                model.eval()
                val_bpb = validate()
                model.train()
                min_val_bpb = min(min_val_bpb, val_bpb)
                tracker.log(step, val_bpb=val_bpb)
            if last or (config.save_every and step % config.save_every == 0 and step > start_step):
                meta = {
                    "step": step,
                    "val_bpb": val_bpb,
                    "model_config": model.config.to_dict(),
                    "user_config": asdict(config),
                    "device_batch_size": config.device_batch_size,
                    "max_seq_len": config.max_seq_len,
                    "loop_state": {
                        "min_val_bpb": min_val_bpb,
                        "smooth_train_loss": smooth_loss,
                        "total_training_time": total_time,
                    },
                }
                state = loader.state_dict() if loader is not None else None
                save_training_state(
                    out, step, model, optimizers, meta, ctx, extra_rank_state=state, writer=writer
                )
            if last:
                break

            start = time.perf_counter()
            lr_mult = apply_schedule(
                optimizers,
                step,
                config.num_iterations,
                warmup_ratio=config.warmup_ratio,
                warmdown_ratio=config.warmdown_ratio,
                final_lr_frac=config.final_lr_frac,
            )
            loss_sum = 0.0
            for _ in range(accum):
                inputs, targets = next(batches)
                with autocast_context(ctx.device):
                    loss = train_model(inputs, targets)
                (loss / accum).backward()
                loss_sum += loss.detach().item()
            average_gradients(model, ctx)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            seconds = time.perf_counter() - start
            total_time += seconds
            session_time += seconds
            train_loss = mean_across_ranks(loss_sum / accum, ctx)
            smooth_loss = 0.9 * smooth_loss + 0.1 * train_loss
            debiased = smooth_loss / (1 - 0.9 ** (step + 1))
            tok_per_s = tokens_per_step / seconds
            metrics = {
                "train_loss": train_loss,
                "smooth_loss": debiased,
                "lr_mult": lr_mult,
                "tok_per_s": tok_per_s,
            }
            if peak:
                metrics["mfu"] = flops * tok_per_s / (peak * ctx.world_size)
            tracker.log(step + 1, **metrics)
            if hasattr(steps, "set_postfix"):
                steps.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_per_s:,.0f}")

        trained_steps = config.num_iterations - start_step
        summary = {
            "final_step": config.num_iterations,
            "val_bpb": val_bpb,
            "min_val_bpb": min_val_bpb,
            "final_train_loss": train_loss if trained_steps else None,
            "tokens_per_step": tokens_per_step,
            "training_seconds": round(total_time, 2),
            "tokens_per_second": round(tokens_per_step * trained_steps / session_time, 1)
            if trained_steps
            else None,
            "parameters": model.num_parameters(),
            "flops_per_token": flops,
        }
        if peak and trained_steps:
            summary["mfu"] = round(
                flops * tokens_per_step * trained_steps / session_time / (peak * ctx.world_size), 4
            )
        tracker.summary(**summary)
    return summary
