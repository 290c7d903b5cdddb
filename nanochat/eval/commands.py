"""The `nanochat eval ...` command group: bpb, sample, chat, tokenizer, download, report, quantization.

`register(subparsers)` adds the `eval` command to the main CLI's argparse subparsers. Each step's parser
carries `handler`, a function of the parsed Namespace that prints its result and returns the exit code.
User errors raise `EvalError` (or another nanochat ValueError), which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nanochat.cliargs import add_checkpoint_args, load_from_args, non_negative_int, positive_int
from nanochat.eval import EvalError
from nanochat.eval.bpb import shard_bpb
from nanochat.eval.chat_eval import results_table, run_chat_eval, sample_completions
from nanochat.eval.tasks import HUB_FILES, arithmetic_task, download_task, load_task
from nanochat.eval.tokenizer_eval import DEFAULT_BASELINES, compression_report, compression_table
from nanochat.tokenizer import Tokenizer


def register(subparsers: Any) -> None:
    """Add `eval` and its steps to the main CLI's subparsers (the object `add_subparsers` returned)."""
    parser = subparsers.add_parser(
        "eval", help="evaluate models and tokenizers (bpb, sample, chat tasks, tokenizer compression)"
    )
    steps = parser.add_subparsers(
        dest="eval_command", required=True, metavar="STEP", parser_class=type(parser)
    )

    bpb = steps.add_parser("bpb", help="validation bits per byte on the last parquet shard of a folder")
    add_checkpoint_args(bpb)
    bpb.add_argument(
        "--data", required=True, metavar="DIR", help="folder of parquet shards with a text column"
    )
    bpb.add_argument("--batch-size", type=positive_int, default=8, help="rows per batch (default 8)")
    bpb.add_argument(
        "--seq-len", type=positive_int, help="tokens per row (default: the model's sequence_len)"
    )
    bpb.add_argument("--max-batches", type=positive_int, help="stop after N batches (default: whole shard)")
    bpb.add_argument(
        "--unigram", action="store_true", help="also report a unigram baseline fit on the other shards"
    )
    bpb.add_argument("--json", action="store_true", help="print one JSON object")
    bpb.set_defaults(handler=cmd_bpb)

    sample = steps.add_parser("sample", help="complete text prompts with a base model (<|bos|> prepended)")
    add_checkpoint_args(sample)
    sample.add_argument("--prompt", required=True, nargs="+", metavar="TEXT", help="one or more prompts")
    sample.add_argument("--max-tokens", type=positive_int, default=64, help="tokens per completion (64)")
    sample.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0)")
    sample.add_argument("--top-k", type=positive_int, help="sample from the k most likely tokens")
    sample.add_argument("--seed", type=non_negative_int, default=42, help="seed of prompt i is seed+i (42)")
    sample.add_argument("--json", action="store_true", help="print a JSON list of {prompt, completion}")
    sample.set_defaults(handler=cmd_sample)

    chat = steps.add_parser("chat", help="accuracy on chat tasks (ARC, MMLU, GSM8K files; arithmetic)")
    add_checkpoint_args(chat)
    chat.add_argument(
        "--task",
        action="append",
        default=[],
        type=_named_path,
        metavar="NAME=PATH",
        help="task file (.jsonl or .parquet); NAME starts with arc, mmlu or gsm8k, e.g. arc-easy=t.parquet",
    )
    chat.add_argument(
        "--arithmetic", type=positive_int, metavar="N", help="add N synthetic arithmetic questions"
    )
    chat.add_argument("--seed", type=non_negative_int, default=0, help="seed of the arithmetic task (0)")
    chat.add_argument("--max-examples", type=positive_int, help="first N examples of each task")
    chat.add_argument("--max-tokens", type=positive_int, default=512, help="reply length limit (512)")
    chat.add_argument("--batch-size", type=positive_int, default=8, help="examples per batch (8)")
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

    quant = steps.add_parser(
        "quantization",
        help="fp32 vs bf16 vs int8: bytes, decode tok/s, bpb, greedy agreement, $/M tokens (markdown)",
    )
    quant.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder or repo id")
    quant.add_argument("--step", type=non_negative_int, help="checkpoint step (default: the latest)")
    quant.add_argument(
        "--depth", type=positive_int, help="also a random-weight model of this depth (the checkpoint's vocab)"
    )
    quant.add_argument(
        "--heldout",
        metavar="FILE",
        help="held-out conversations, JSONL (default: heldout.jsonl in the checkpoint folder)",
    )
    quant.add_argument("--batches", default="1,16,64", help="decode batch sizes (default 1,16,64)")
    quant.add_argument("--tokens", type=positive_int, default=32, help="decode steps timed per round (32)")
    quant.add_argument("--rounds", type=positive_int, default=3, help="interleaved timing rounds (3)")
    quant.add_argument("--prompts", type=positive_int, default=32, help="held-out prompts compared (32)")
    quant.add_argument("--new-tokens", type=positive_int, default=32, help="fp32 tokens per prompt (32)")
    quant.add_argument(
        "--env-file", default="envs/prod.yaml", metavar="FILE", help="the Cloud Run shape (envs/prod.yaml)"
    )
    quant.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: what the service takes on the 2-vCPU Cloud Run shape, cores - 1)",
    )
    quant.add_argument("--out", required=True, metavar="FILE", help="markdown file to write")
    quant.set_defaults(handler=cmd_quantization)

    report = steps.add_parser(
        "report", help="report on a base + chat model pair (bpb vs unigram, chat checks)"
    )
    report.add_argument("--base", required=True, metavar="DIR", help="base checkpoint folder")
    report.add_argument("--chat", required=True, metavar="DIR", help="chat (SFT) checkpoint folder")
    report.add_argument("--data", required=True, metavar="DIR", help="pretraining shards (last = validation)")
    report.add_argument(
        "--conversations", required=True, metavar="FILE", help="held-out conversations (JSONL)"
    )
    report.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and report.json")
    report.add_argument("--title", default="Model report", help="report title")
    report.add_argument(
        "--arithmetic", type=positive_int, default=50, help="arithmetic questions (default 50)"
    )
    report.add_argument("--max-batches", type=positive_int, help="validation batches at most (default: all)")
    report.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    report.add_argument("--dtype", choices=["float32", "bfloat16"], help="weights dtype")
    report.add_argument("--threads", type=positive_int, help="torch CPU threads")
    report.set_defaults(handler=cmd_report, step=None)


# ---- handlers -----------------------------------------------------------------------------------------
def cmd_bpb(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    result = {
        "checkpoint": str(loaded.directory),
        "step": loaded.step,
        **shard_bpb(
            loaded.model,
            loaded.tokenizer,
            args.data,
            args.batch_size,
            args.seq_len,
            max_batches=args.max_batches,
            unigram=args.unigram,
        ),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        shard = Path(result["val_shard"]).name
        print(f"val bpb: {result['bpb']:.4f} ({result['tokens']} tokens of {shard}, step {loaded.step})")
        if "unigram_bpb" in result:
            fit_on = f"{result['unigram_fit_shards']} training shards"
            print(f"unigram baseline bpb: {result['unigram_bpb']:.4f} (fit on {fit_on})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
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
    loaded = load_from_args(args)
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


def cmd_report(args: argparse.Namespace) -> int:
    from nanochat.eval.report import evaluate_pair, write_report

    base = load_from_args(args, checkpoint=args.base)
    chat = load_from_args(args, checkpoint=args.chat)
    figures = evaluate_pair(
        base,
        chat,
        Path(args.data),
        Path(args.conversations),
        arithmetic_questions=args.arithmetic,
        max_batches=args.max_batches,
    )
    path = write_report(figures, Path(args.out), args.title)
    print(
        f"base val bpb {figures['base']['bpb']:.4f} (unigram {figures['base']['unigram_bpb']:.4f}); "
        f"chat replies ending properly {figures['chat']['assistant_end_rate']:.1%} -> {path}"
    )
    return 0


def cmd_quantization(args: argparse.Namespace) -> int:
    import platform
    import shlex
    import sys

    import torch

    from nanochat.checkpoint import load_checkpoint
    from nanochat.eval import quantization

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
        if not batches or any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        raise EvalError(
            f"--batches must be positive integers separated by commas, got {args.batches!r}"
        ) from None
    torch.set_num_threads(args.threads)
    options = quantization.Options(
        batches=batches,
        tokens=args.tokens,
        rounds=args.rounds,
        prompts=args.prompts,
        new_tokens=args.new_tokens,
    )
    shape = quantization.cloud_shape(Path(args.env_file))
    loaded = load_checkpoint(args.checkpoint, step=args.step)
    heldout = Path(args.heldout) if args.heldout else loaded.directory / "heldout.jsonl"
    conversations = quantization.heldout_conversations(heldout, max(args.prompts, 1))
    tokenizer = loaded.tokenizer

    def checkpoint_model():
        return load_checkpoint(loaded.directory, step=loaded.step).model

    models = [(f"{Path(args.checkpoint).name} (checkpoint step {loaded.step})", checkpoint_model)]
    if args.depth:
        vocab = loaded.model.config.vocab_size
        title = f"depth {args.depth}, random weights (not trained: no time to train one here)"
        models.append((title, lambda: quantization.random_model(args.depth, vocab)))
    results = [
        quantization.measure_model(title, build, tokenizer, conversations, options, shape)
        for title, build in models
    ]
    context = {
        "command": "nanochat eval " + shlex.join(sys.argv[sys.argv.index("quantization") :])
        if "quantization" in sys.argv
        else "nanochat eval quantization",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}",
        "conversations": len(conversations),
        "heldout": str(heldout),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(quantization.render_markdown(results, options, shape, context))
    for result in results:
        for name, row in result["variants"].items():
            print(f"{result['title']}: {name} agreement {row['agreement']:.1%} bpb {row['bpb']:.4f} "
                  f"tok/s {row['decode_tokens_per_s']}")  # fmt: skip
    print(f"-> {out}")
    return 0


# ---- helpers ------------------------------------------------------------------------------------------


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. arc-easy=test.parquet), got {text!r}")
    return name, Path(path)
