"""What base pretraining and SFT share: precision, FLOPs accounting, and resumable training checkpoints.

A training checkpoint is a nanochat checkpoint (model + meta, written by rank 0) plus, per rank,
`optim_NNNNNN_rankR.pt` with both optimizers' state and the RNG state, so a resumed run continues exactly
as the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from nanochat.checkpoint import (
    CheckpointError,
    checkpoint_steps,
    find_last_step,
    meta_path,
    optimizer_path,
    read_meta,
    read_state_dict,
    save_checkpoint,
)
from nanochat.gpt import GPT, GPTConfig
from nanochat.train.checkpoint_writer import CheckpointWriter
from nanochat.train.distributed import DistContext, barrier, gather_objects
from nanochat.train.optim import load_optimizer_state, optimizer_state

# dense bf16 tensor-core peaks, for model FLOPs utilisation
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "B200": 2250e12,
}


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6 × non-embedding parameters + attention (nanochat's estimate)."""
    c = model.config
    matrices = model.num_parameters() - model.transformer.wte.weight.numel()
    return 6.0 * matrices + 12.0 * c.n_layer * c.n_head * c.head_dim * c.sequence_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def save_training_state(
    out_dir: Path,
    step: int,
    model: GPT,
    optimizers: list,
    meta: dict,
    ctx: DistContext,
    extra_rank_state=None,
    writer: CheckpointWriter | None = None,
) -> None:
    """Model + meta on rank 0; optimizer + RNG (+ `extra_rank_state`, e.g. the dataloader) on every rank.
    With a `writer`, the files are written by its background thread (from CPU copies taken here)."""
    rank_states = gather_objects(extra_rank_state, ctx)
    if extra_rank_state is not None:
        meta = {**meta, "dataloader_state_dict": {"world_size": ctx.world_size, "ranks": rank_states}}
    rng = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    state = {"optimizers": optimizer_state(optimizers), "rng": rng}
    model_state = model.state_dict() if ctx.is_main else {}
    if writer is None:
        save_checkpoint(out_dir, step, model_state, meta, optimizer_state=state, rank=ctx.rank)
    else:
        writer.save(step, model_state, meta, optimizer_state=state)
    barrier(ctx)


def fetch_from_bucket(out_dir: Path, bucket: str, ctx: DistContext) -> None:
    """Before a resume: when `out_dir` holds no complete checkpoint, bring the bucket's latest one down."""
    from nanochat.train.gcs import BucketMirror

    out_dir = Path(out_dir)
    has_local = any(meta_path(out_dir, s).is_file() for s in checkpoint_steps(out_dir))
    if not has_local and BucketMirror(bucket).download_latest(out_dir, ctx.rank) is None:
        raise CheckpointError(f"cannot resume: no complete checkpoint in {out_dir} nor in {bucket}")
    barrier(ctx)


def load_training_state(
    out_dir: Path, model: GPT, optimizers: list, ctx: DistContext, step: int | None = None
) -> tuple[int, dict, dict | None]:
    """Restore model, optimizers and RNG from `out_dir`; returns (step, meta, this rank's loader state)."""
    step = find_last_step(out_dir) if step is None else step
    meta = read_meta(out_dir, step)
    saved = GPTConfig.from_dict(meta["model_config"])
    if saved != model.config:
        raise CheckpointError(
            f"cannot resume from {out_dir}: it holds a {saved.to_dict()} model, this run builds "
            f"{model.config.to_dict()}"
        )
    state = read_state_dict(Path(out_dir) / f"model_{step:06d}.pt", device=ctx.device)
    model.load_state_dict({k: v.to(model.lm_head.weight.dtype) for k, v in state.items()}, strict=True)
    path = optimizer_path(out_dir, step, ctx.rank)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} is missing (optimizer state of rank {ctx.rank})")
    rank_state = torch.load(path, map_location=ctx.device, weights_only=True)
    load_optimizer_state(optimizers, rank_state["optimizers"])
    torch.set_rng_state(rank_state["rng"]["cpu"].cpu())
    if "cuda" in rank_state["rng"] and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(rank_state["rng"]["cuda"].cpu(), ctx.device)
    loader = meta.get("dataloader_state_dict")
    loader_state = None
    if loader:
        if loader.get("world_size") != ctx.world_size:
            raise CheckpointError(
                f"cannot resume: the checkpoint was written by {loader.get('world_size')} processes, "
                f"this run has {ctx.world_size}"
            )
        loader_state = loader["ranks"][ctx.rank]
    return step, meta, loader_state
