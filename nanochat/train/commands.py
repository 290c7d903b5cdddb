"""`nanochat train tokenizer | base | sft`: argument parsing and the hand-off to the trainers.

`base` and `sft` run the same way alone or under `torchrun --nproc_per_node=N -m nanochat train ...`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nanochat.data.shards import num_row_groups, read_row_group, split_shards
from nanochat.tokenizer import Tokenizer
from nanochat.train.config import ConfigError, add_config_arguments, build_config
from nanochat.train.distributed import init_distributed, shutdown


def iter_texts(shards: list[Path], doc_cap: int):
    for path in shards:
        for group in range(num_row_groups(path)):
            for text in read_row_group(path, group):
                yield text[:doc_cap]


def cmd_tokenizer(args: argparse.Namespace) -> int:
    if args.vocab_size < 265:
        raise ConfigError(
            f"--vocab-size must be at least 265 (256 bytes + 9 special tokens), got {args.vocab_size}"
        )
    train_shards, val_shards = split_shards(args.data)
    chars = 0

    def limited():
        nonlocal chars
        for text in iter_texts(train_shards, args.doc_cap):
            if chars + len(text) > args.max_chars:
                return
            chars += len(text)
            yield text

    start = time.perf_counter()
    tokenizer = Tokenizer.train_from_iterator(limited(), args.vocab_size)
    seconds = time.perf_counter() - start
    tokenizer.save(args.out)
    val_text = "".join(iter_texts(val_shards, args.doc_cap))
    ids = tokenizer.encode(val_text)
    ratio = len(val_text.encode()) / max(len(ids), 1)
    print(
        f"tokenizer: vocab {tokenizer.get_vocab_size()}, trained on {chars:,} characters in {seconds:.1f}s, "
        f"{ratio:.2f} bytes/token on the validation shard -> {args.out}"
    )
    return 0


def _run_trainer(args: argparse.Namespace, name: str) -> int:
    """Build the config (defaults <- TOML [name] <- flags), join torchrun's group if any, train."""
    if name == "base":
        from nanochat.train.base import BaseConfig as config_class
        from nanochat.train.base import train_base as train
    else:
        from nanochat.train.sft import SFTConfig as config_class
        from nanochat.train.sft import train_sft as train
    config = build_config(config_class, args, args.config, name)
    ctx = init_distributed(config.device)
    try:
        summary = train(config, ctx)
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(_summary_line(name, config.out, summary))
    return 0


def cmd_base(args: argparse.Namespace) -> int:
    return _run_trainer(args, "base")


def cmd_sft(args: argparse.Namespace) -> int:
    return _run_trainer(args, "sft")


def _summary_line(name: str, out: str, summary: dict) -> str:
    parts = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    return f"{name}: {parts} -> {out}"


def register(sub) -> None:
    from nanochat.train.base import HELP as BASE_HELP
    from nanochat.train.base import BaseConfig
    from nanochat.train.sft import HELP as SFT_HELP
    from nanochat.train.sft import SFTConfig

    train = sub.add_parser("train", help="train a tokenizer, a base model, or fine-tune on conversations")
    steps = train.add_subparsers(dest="train_command", required=True, parser_class=type(train))

    tok = steps.add_parser("tokenizer", help="train the BPE tokenizer on the training shards")
    tok.add_argument("--data", required=True, help="folder of parquet shards (the last one is validation)")
    tok.add_argument("--out", required=True, help="folder to write tokenizer.pkl and token_bytes.pt")
    tok.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size (default 4096)")
    tok.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters to train on at most")
    tok.add_argument(
        "--doc-cap", type=int, default=10_000, help="characters per document at most (default 10000)"
    )
    tok.set_defaults(handler=cmd_tokenizer)

    base = steps.add_parser("base", help="pretrain a base model (torchrun for several processes)")
    base.add_argument("--config", help="TOML file with a [base] table (flags override it)")
    add_config_arguments(base, BaseConfig, BASE_HELP)
    base.set_defaults(handler=cmd_base)

    sft = steps.add_parser("sft", help="supervised fine-tuning on conversations (JSONL)")
    sft.add_argument("--config", help="TOML file with an [sft] table (flags override it)")
    add_config_arguments(sft, SFTConfig, SFT_HELP)
    sft.set_defaults(handler=cmd_sft)
