"""Argument parsing pieces every `nanochat` command shares: one-line usage errors, integer types, and
the `--checkpoint/--step/--device/--dtype/--threads` group with the loader behind it."""

from __future__ import annotations

import argparse

import torch

from nanochat.checkpoint import LoadedCheckpoint, load_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class UsageError(Exception):
    """A bad command line; printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def int_at_least(minimum: int, description: str):
    """An argparse type: an integer >= minimum, with `description` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint folder (model_NNNNNN.pt + meta_NNNNNN.json) or a Hugging Face repo id; the "
        "tokenizer may sit inside it, in tokenizer/ beside it, or two levels up",
    )
    parser.add_argument("--step", type=non_negative_int, help="checkpoint step (default: the latest)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights dtype (default: float32 on CPU, bfloat16 on CUDA)"
    )
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")


def resolve_device(name: str) -> torch.device:
    """A device this machine really has, or a usage error saying why not."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name} was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name} was asked for but Apple MPS is not available")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r} is not supported; use cpu, cuda[:N] or mps")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The dtype asked for, else the default: bf16 on CUDA (as nanochat trains), fp32 elsewhere."""
    if name:
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_from_args(args: argparse.Namespace, checkpoint: str | None = None) -> LoadedCheckpoint:
    """Load the checkpoint the `add_checkpoint_args` options name (fp32 on CPU, bf16 on CUDA by default)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    return load_checkpoint(checkpoint or args.checkpoint, step=args.step, device=device, dtype=dtype)
