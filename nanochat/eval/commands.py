"""The `nanochat eval ...` command group: bpb, sample, chat, tokenizer, download.

`register(subparsers)` adds the `eval` command to the main CLI's argparse subparsers. Each step's parser
carries `handler`, a function of the parsed Namespace that prints its result and returns the exit code.
User errors raise `EvalError` (or another nanochat ValueError), which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nanochat.checkpoint import LoadedCheckpoint, load_checkpoint
from nanochat.data.shards import list_shards, num_row_groups, read_row_group
from nanochat.eval import EvalError
from nanochat.eval.bpb import evaluate_bpb, unigram_bpb
from nanochat.eval.chat_eval import results_table, run_chat_eval, sample_completions
from nanochat.eval.tasks import HUB_FILES, arithmetic_task, download_task, load_task
from nanochat.eval.tokenizer_eval import DEFAULT_BASELINES, compression_report, compression_table
from nanochat.tokenizer import Tokenizer
from nanochat.train.dataloader import TokenDataLoader

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def register(subparsers: Any) -> None:
    """Add `eval` and its steps to the main CLI's subparsers (the object `add_subparsers` returned)."""
    parser = subparsers.add_parser(
        "eval", help="evaluate models and tokenizers (bpb, sample, chat tasks, tokenizer compression)"
    )
    steps = parser.add_subparsers(
        dest="eval_command", required=True, metavar="STEP", parser_class=type(parser)
    )

    bpb = steps.add_parser("bpb", help="validation bits per byte on the last parquet shard of a folder")
    _add_checkpoint_args(bpb)
    bpb.add_argument(
        "--data", required=True, metavar="DIR", help="folder of parquet shards with a text column"
    )
    bpb.add_argument("--batch-size", type=_positive_int, default=8, help="rows per batch (default 8)")
    bpb.add_argument(
        "--seq-len", type=_positive_int, help="tokens per row (default: the model's sequence_len)"
    )
    bpb.add_argument("--max-batches", type=_positive_int, help="stop after N batches (default: whole shard)")
    bpb.add_argument(
        "--unigram", action="store_true", help="also report a unigram baseline fit on the other shards"
    )
    bpb.add_argument("--json", action="store_true", help="print one JSON object")
    bpb.set_defaults(handler=cmd_bpb)

    sample = steps.add_parser("sample", help="complete text prompts with a base model (<|bos|> prepended)")
    _add_checkpoint_args(sample)
    sample.add_argument("--prompt", required=True, nargs="+", metavar="TEXT", help="one or more prompts")
    sample.add_argument("--max-tokens", type=_positive_int, default=64, help="tokens per completion (64)")
    sample.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0)")
    sample.add_argument("--top-k", type=_positive_int, help="sample from the k most likely tokens")
    sample.add_argument("--seed", type=_non_negative_int, default=42, help="seed of prompt i is seed+i (42)")
    sample.add_argument("--json", action="store_true", help="print a JSON list of {prompt, completion}")
    sample.set_defaults(handler=cmd_sample)

    chat = steps.add_parser("chat", help="accuracy on chat tasks (ARC, MMLU, GSM8K files; arithmetic)")
    _add_checkpoint_args(chat)
    chat.add_argument(
        "--task",
        action="append",
        default=[],
        type=_named_path,
        metavar="NAME=PATH",
        help="task file (.jsonl or .parquet); NAME starts with arc, mmlu or gsm8k, e.g. arc-easy=t.parquet",
    )
    chat.add_argument(
        "--arithmetic", type=_positive_int, metavar="N", help="add N synthetic arithmetic questions"
    )
    chat.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the arithmetic task (0)")
    chat.add_argument("--max-examples", type=_positive_int, help="first N examples of each task")
    chat.add_argument("--max-tokens", type=_positive_int, default=512, help="reply length limit (512)")
    chat.add_argument("--batch-size", type=_positive_int, default=8, help="examples per batch (8)")
    chat.add_argument("--json", action="store_true", help="print the results as JSON")
    chat.set_defaults(handler=cmd_chat)

    tokenizer = steps.add_parser("tokenizer", help="bytes per token on text files vs baseline tokenizers")
    tokenizer.add_argument("--tokenizer", required=True, metavar="DIR", help="folder with tokenizer.pkl")
    tokenizer.add_argument("--previous", metavar="DIR", help="a previous tokenizer folder to compare with")
    tokenizer.add_argument("--text", required=True, nargs="+", metavar="FILE", help="UTF-8 text files")
    tokenizer.add_argument(
        "--baseline",
        action="append",
        metavar="NAME",
        help=f"tiktoken encoding to compare with (repeatable; default {' and '.join(DEFAULT_BASELINES)})",
    )
    tokenizer.add_argument("--no-baselines", action="store_true", help="compare with no tiktoken encoding")
    tokenizer.add_argument("--json", action="store_true", help="print the report as JSON")
    tokenizer.set_defaults(handler=cmd_tokenizer)

    download = steps.add_parser("download", help="download a public task file from the Hugging Face hub")
    download.add_argument("name", choices=sorted(HUB_FILES), help="the task")
    download.add_argument("--split", default="test", help="the split (default test)")
    download.add_argument("--out", required=True, metavar="DIR", help="folder to download into")
    download.set_defaults(handler=cmd_download)


# ---- handlers -----------------------------------------------------------------------------------------
def cmd_bpb(args: argparse.Namespace) -> int:
    shards = list_shards(args.data)
    train_shards, val_shard = shards[:-1], shards[-1]
    loaded = _load(args)
    model, tokenizer = loaded.model, loaded.tokenizer
    seq_len = args.seq_len or model.config.sequence_len
    # the training loop's own loader, so this number and the val_bpb logged in training agree
    loader = TokenDataLoader(
        [val_shard], tokenizer, args.batch_size, seq_len, device=model.lm_head.weight.device, loop=False
    )
    stream = itertools.islice(loader, args.max_batches)
    first = next(stream, None)
    if first is None:
        raise EvalError(
            f"{val_shard} holds fewer than {args.batch_size * seq_len + 1} tokens, not one batch of "
            f"{args.batch_size}x{seq_len}; lower --batch-size or --seq-len"
        )
    targets: list[torch.Tensor] = []  # kept for the unigram baseline, which scores the same targets

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, batch_targets in itertools.chain([first], stream):
            targets.append(batch_targets.cpu())
            yield inputs, batch_targets

    bpb = evaluate_bpb(model, batches(), tokenizer.token_bytes)
    result: dict[str, Any] = {
        "checkpoint": str(loaded.directory),
        "step": loaded.step,
        "val_shard": str(val_shard),
        "batches": len(targets),
        "tokens": len(targets) * args.batch_size * seq_len,
        "bpb": bpb,
    }
    if args.unigram:
        if not train_shards:
            raise EvalError(f"--unigram fits on the shards before the last one, and {args.data} has only one")
        result["unigram_bpb"] = unigram_bpb(
            _train_token_chunks(train_shards, tokenizer),
            torch.cat(targets),
            tokenizer.token_bytes,
            tokenizer.vocab_size,
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"val bpb: {bpb:.4f} ({result['tokens']} tokens of {val_shard.name}, step {loaded.step})")
        if "unigram_bpb" in result:
            fit_on = f"{len(train_shards)} training shards"
            print(f"unigram baseline bpb: {result['unigram_bpb']:.4f} (fit on {fit_on})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    loaded = _load(args)
    completions = sample_completions(
        loaded.model,
        loaded.tokenizer,
        args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        top_k=args.top_k,
    )
    if args.json:
        pairs = [{"prompt": p, "completion": c} for p, c in zip(args.prompt, completions, strict=True)]
        print(json.dumps(pairs, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(p + c for p, c in zip(args.prompt, completions, strict=True)))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    tasks = {}
    for name, path in args.task:
        if name in tasks:
            raise EvalError(f"--task {name} is given twice; give each task a distinct name")
        tasks[name] = load_task(name, path)
    if args.arithmetic:
        tasks["arithmetic"] = arithmetic_task(args.arithmetic, seed=args.seed)
    if not tasks:
        raise EvalError("nothing to evaluate: give --task NAME=PATH (repeatable) and/or --arithmetic N")
    loaded = _load(args)
    results = run_chat_eval(
        loaded.model,
        loaded.tokenizer,
        tasks,
        max_examples=args.max_examples,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
    )
    print(json.dumps(results, indent=2) if args.json else results_table(results))
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_directory(args.tokenizer)
    previous = Tokenizer.from_directory(args.previous) if args.previous else None
    texts = {}
    for file in args.text:
        path = Path(file)
        name = path.name if path.name not in texts else str(path)
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise EvalError(f"text file not found: {path}") from None
        except UnicodeDecodeError as e:
            raise EvalError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise EvalError(f"cannot read {path}: {e.strerror}") from None
    baselines = () if args.no_baselines else tuple(args.baseline or DEFAULT_BASELINES)
    report = compression_report(tokenizer, texts, baselines=baselines, previous=previous)
    print(json.dumps(report, indent=2) if args.json else compression_table(report))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    print(download_task(args.name, args.split, args.out))
    return 0


# ---- helpers ------------------------------------------------------------------------------------------
def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder or HF repo id")
    parser.add_argument("--step", type=_non_negative_int, help="checkpoint step (default: the latest)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights dtype (default: float32 on CPU, bfloat16 on CUDA)"
    )
    parser.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")


def _load(args: argparse.Namespace) -> LoadedCheckpoint:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise EvalError(f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {args.device} was asked for but no CUDA GPU is available")
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = DTYPES[args.dtype] if args.dtype else default
    return load_checkpoint(args.checkpoint, step=args.step, device=device, dtype=dtype)


def _train_token_chunks(shards: list[Path], tokenizer: Tokenizer) -> Iterator[torch.Tensor]:
    """The token ids of every training document ([<|bos|>] + tokens), one tensor per row group."""
    bos = tokenizer.get_bos_token_id()
    for shard in shards:
        for group in range(num_row_groups(shard)):
            encoded = tokenizer.encode(read_row_group(shard, group), prepend=bos)
            yield torch.tensor([t for ids in encoded for t in ids], dtype=torch.long)


def _int_at_least(minimum: int, description: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. arc-easy=test.parquet), got {text!r}")
    return name, Path(path)
