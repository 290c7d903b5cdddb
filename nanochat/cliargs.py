"""Argument parsing pieces every `nanochat` command shares: one-line usage errors, integer types, and
the `--checkpoint/--step/--device/--dtype/--threads/--quantization` group with the loader behind it."""

from __future__ import annotations

import argparse

import torch

from nanochat.checkpoint import LoadedCheckpoint, load_checkpoint
from nanochat.device import DTYPE_CHOICES, DeviceError, resolve_device, resolve_dtype
from nanochat.quantize import QUANTIZATIONS


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


def add_checkpoint_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--checkpoint",
        required=required,
        metavar="DIR",
        help="checkpoint folder (model_NNNNNN.pt + meta_NNNNNN.json) or a Hugging Face repo id; the "
        "tokenizer may sit inside it, in tokenizer/ beside it, or two levels up",
    )
    parser.add_argument("--step", type=non_negative_int, help="checkpoint step (default: the latest)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        help="weights dtype (default: float32 on CPU, bfloat16 on CUDA; auto: bfloat16 on CUDA, AMX and "
        "AVX512-BF16 CPUs)",
    )
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    add_quantization_arg(parser)


def add_quantization_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="none",
        help="int8: the linear layers' weights in int8 (CPU, float32 model; default none)",
    )


def load_from_args(args: argparse.Namespace, checkpoint: str | None = None) -> LoadedCheckpoint:
    """Load the checkpoint the `add_checkpoint_args` options name (fp32 on CPU, bf16 on CUDA by default)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except DeviceError as e:
        raise UsageError(f"--device {e.detail}") from None
    dtype = resolve_dtype(args.dtype, device)
    return load_checkpoint(
        checkpoint or args.checkpoint,
        step=args.step,
        device=device,
        dtype=dtype,
        quantization=getattr(args, "quantization", "none"),
    )
