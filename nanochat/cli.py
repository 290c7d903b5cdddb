"""The `nanochat` command (also `python -m nanochat`): serve, sample, chat and bench on a checkpoint.

The engine's own commands (sample, chat, bench, train, data, eval, export) are registered here; the
service's `serve` (app/__main__.py, the same as `python -m app`) and the learning tracks' commands
(`classify`, `hf`, `log`: tracks/) are entry points of the group `nanochat.commands` (pyproject.toml), found
with importlib.metadata, so the engine never imports them.
A command whose extra is not installed is still listed, and says what to install when it is run.

Errors a user can cause (bad arguments, a missing or broken checkpoint, an impossible request) print one
line on stderr and exit non-zero; they never print a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

import torch

from nanochat import hf_export
from nanochat.chat_loop import chat_loop
from nanochat.checkpoint import load_checkpoint
from nanochat.cliargs import (
    OneLineParser,
    UsageError,
    add_checkpoint_args,
    add_quantization_arg,
    load_from_args,
    non_negative_int,
    positive_int,
)
from nanochat.data import commands as data_commands
from nanochat.device import DTYPE_CHOICES, resolve_dtype
from nanochat.engine import Engine, EngineError, SamplingParams
from nanochat.eval import commands as eval_commands
from nanochat.eval import run_report
from nanochat.gpt import GPT
from nanochat.memory import PREFIX_CACHE_SIZE, PREFIX_CACHING_DEFAULT
from nanochat.quantize import check_quantization, quantize_model
from nanochat.rag import cli as rag_commands
from nanochat.remote_chat import api_root, default_api_key, remote_chat
from nanochat.tokenizer import Tokenizer
from nanochat.train import commands as train_commands
from nanochat.train import sweep

EXIT_USAGE = 2
EXIT_ERROR = 1
COMMANDS_GROUP = "nanochat.commands"  # entry points: name = the subcommand, value = its `register`
# a ValueError raised by these packages' code is a user error (one line); any other is a bug (traceback)
PROJECT_PACKAGES = ("nanochat.", "tracks.", "app.")


def _add_sampling_args(p: argparse.ArgumentParser, temperature: float, top_k: int | None) -> None:
    p.add_argument("--max-tokens", type=positive_int, default=256, help="tokens to generate (default 256)")
    p.add_argument(
        "--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})"
    )
    p.add_argument(
        "--top-k", type=positive_int, default=top_k, help=f"sample from the k best (default {top_k})"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument("--seed", type=non_negative_int, default=42, help="random seed (default 42)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nanochat", description="nanochat engine: sample, chat, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    sample = sub.add_parser("sample", help="complete a prompt with a base model (BOS prepended)")
    add_checkpoint_args(sample)
    sample.add_argument("--prompt", required=True, help="text to complete")
    _add_sampling_args(sample, temperature=0.0, top_k=None)
    sample.add_argument("--ids", action="store_true", help="print JSON with prompt_ids, tokens and text")
    sample.set_defaults(handler=cmd_sample)

    chat = sub.add_parser(
        "chat",
        help="chat in the terminal: a checkpoint here (calculator tool) or a running server (--url)",
        description="Chat in the terminal with a checkpoint loaded here (--checkpoint) or with a running "
        "server through its OpenAI-compatible API (--url). /reset starts a new conversation, /quit or "
        "Ctrl-D leaves.",
    )
    add_checkpoint_args(chat, required=False)
    remote = chat.add_argument_group("a running server (instead of --checkpoint)")
    remote.add_argument(
        "--url", help="the server's address, e.g. http://127.0.0.1:8000 (with or without /v1)"
    )
    remote.add_argument(
        "--api-key",
        default=default_api_key(),
        help="sent as 'Authorization: Bearer' (default: $NANOCHAT_API_KEY or $OPENAI_API_KEY)",
    )
    remote.add_argument("--model", help="the request's model (default: the first GET /v1/models lists)")
    _add_sampling_args(chat, temperature=0.6, top_k=50)
    chat.add_argument("--system", help="system message for the conversation")
    chat.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        help="with --checkpoint: keep each turn's keys and values so the next turn prefills only its new "
        f"tokens (default: {'on' if PREFIX_CACHING_DEFAULT else 'off'}, as in nanochat serve)",
    )
    chat.set_defaults(handler=cmd_chat)

    bench = sub.add_parser("bench", help="engine throughput vs Hugging Face transformers (JSON with --json)")
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="checkpoint folder or Hugging Face repo id")
    source.add_argument("--depth", type=positive_int, help="random-weight model of this depth instead")
    bench.add_argument("--step", type=non_negative_int, help="checkpoint step (default: the latest)")
    bench.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="weights (auto: bf16 on AMX/AVX512-BF16 CPUs)",
    )
    bench.add_argument("--compile", action="store_true", help="also the compiled decode step, vs eager")
    bench.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    add_quantization_arg(bench)
    bench.add_argument("--batches", default="4,16,64", help="aggregate decode batch sizes (default 4,16,64)")
    bench.add_argument("--prompt-len", type=positive_int, default=64, help="prompt tokens (default 64)")
    bench.add_argument("--decode-steps", type=positive_int, default=32, help="decode steps (default 32)")
    bench.add_argument("--repeats", type=positive_int, default=3, help="best of N (default 3)")
    bench.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    bench.add_argument("--train", action="store_true", help="training throughput instead (needs --depth)")
    bench.add_argument("--batch-size", type=positive_int, default=16, help="--train: sequences per step (16)")
    bench.add_argument("--seq-len", type=positive_int, default=256, help="--train: tokens per sequence (256)")
    bench.add_argument("--vocab-size", type=positive_int, default=2048, help="--train: vocabulary (2048)")
    bench.add_argument("--train-steps", type=positive_int, default=5, help="--train: steps per repeat (5)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=cmd_bench)

    for module in (train_commands, data_commands, eval_commands, hf_export, rag_commands, run_report, sweep):
        module.register(sub)
    register_entry_point_commands(sub)
    return parser


def register_entry_point_commands(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands of the `nanochat.commands` entry points (the learning tracks). One that cannot
    be imported for want of an optional extra is listed anyway; running it reports the missing module."""
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except ModuleNotFoundError as e:
            if _top_module(e) not in OPTIONAL_MODULES:
                raise
            _register_unavailable(sub, entry.name, e)
            continue
        register(sub)


def _register_unavailable(sub: argparse._SubParsersAction, name: str, error: ModuleNotFoundError) -> None:
    extra = OPTIONAL_MODULES[_top_module(error)]
    command = sub.add_parser(name, help=f"(not installed: needs the {extra!r} extra)")
    command.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        raise error

    command.set_defaults(handler=unavailable)


def _top_module(error: ModuleNotFoundError) -> str:
    return (error.name or "").partition(".")[0]


def _params(args: argparse.Namespace, **extra) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        **extra,
    )


def _stream(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, out, prefix: str = ""
) -> list[int]:
    """Run one request to the end, writing `prefix` and then its text as it arrives; returns the ids."""
    request = engine.begin(prompt_ids, params)  # raises before anything is written
    if out is not None:
        out.write(prefix)
    events = []
    while request.prefill_remaining:
        events = engine.prefill(request)
    tokens = []
    while True:
        for event in events:
            tokens.append(event.token)
            if out is not None and event.text:
                out.write(event.text)
                out.flush()
        if request.done:
            return tokens
        events = engine.decode_step()


def cmd_sample(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer.encode(args.prompt, prepend=tokenizer.get_bos_token_id())
    params = _params(args)
    engine = Engine(loaded.model, tokenizer, max_batch=1)
    if args.ids:
        tokens = _stream(engine, prompt_ids, params, out=None)
        print(json.dumps({"prompt_ids": prompt_ids, "tokens": tokens, "text": tokenizer.decode(tokens)}))
    else:
        _stream(engine, prompt_ids, params, out=sys.stdout, prefix=args.prompt)
        sys.stdout.write("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    if args.url:
        return _remote_chat(args)
    if not args.checkpoint:
        raise UsageError("chat needs --checkpoint (a model loaded here) or --url (a running server)")
    if args.model:
        raise UsageError("--model names a server's model: give it with --url")
    loaded = load_from_args(args)
    tokenizer = loaded.tokenizer
    engine = chat_engine(loaded.model, tokenizer, args.enable_prefix_caching)
    special = set(tokenizer.get_special_tokens().values())
    print(f"nanochat {loaded.directory.name} step {loaded.step}.")

    def respond(messages: list[dict]) -> str | None:
        conversation = {"messages": [*messages, {"role": "assistant", "content": ""}]}
        prompt_ids = tokenizer.render_for_completion(conversation)
        try:
            reply_ids = _stream(engine, prompt_ids, _params(args), out=sys.stdout, prefix="Assistant: ")
        except EngineError as e:
            print(f"nanochat: {e}; type /reset to start a new conversation", file=sys.stderr)
            return None
        sys.stdout.write("\n")
        return tokenizer.decode([t for t in reply_ids if t not in special])

    return chat_loop(respond, args.system)


def chat_engine(model: GPT, tokenizer: Tokenizer, prefix_caching: bool | None) -> Engine:
    """The in-process chat's engine: one conversation, and a prefix cache if `prefix_caching` says so
    (None: the default) of one row's bytes, enough for any conversation that fits the context."""
    if prefix_caching is None:
        prefix_caching = PREFIX_CACHING_DEFAULT
    size = PREFIX_CACHE_SIZE if prefix_caching else 0
    return Engine(model, tokenizer, max_batch=1, prefix_cache_bytes=size)


def _remote_chat(args: argparse.Namespace) -> int:
    checkpoint_options = {
        "--checkpoint": args.checkpoint,
        "--step": args.step,
        "--dtype": args.dtype,
        "--threads": args.threads,
        "--device": None if args.device == "cpu" else args.device,
        "--quantization": None if args.quantization == "none" else args.quantization,
        "--enable-prefix-caching": args.enable_prefix_caching,
    }
    given = [option for option, value in checkpoint_options.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} cannot go with --url (the server at --url has its own model)")
    try:
        root = api_root(args.url)
    except ValueError as e:
        raise UsageError(str(e)) from None
    sampling = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    return remote_chat(root, args.api_key, args.model, args.system, sampling)


def cmd_bench(args: argparse.Namespace) -> int:
    from nanochat.bench import run_benchmark

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
        if any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--batches must be positive integers separated by commas, got {args.batches!r}"
        ) from None
    if args.train:
        from nanochat.bench import run_train_benchmark

        if not args.depth:
            raise UsageError("bench --train measures a fresh model: give --depth, not --checkpoint")
        result = run_train_benchmark(
            args.depth,
            args.vocab_size,
            args.seq_len,
            args.batch_size,
            steps=args.train_steps,
            repeats=args.repeats,
            with_hf=not args.no_transformers,
        )
        _print_result(result, args.json)
        return 0
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    if args.checkpoint:
        loaded = load_checkpoint(args.checkpoint, step=args.step, dtype=dtype, quantization=args.quantization)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        check_quantization(args.quantization, torch.device("cpu"), dtype)
        model, tokenizer = _random_model(args.depth, dtype)
        quantize_model(model, args.quantization)
    result = run_benchmark(
        model,
        tokenizer,
        batches=batches,
        prompt_len=args.prompt_len,
        decode_steps=args.decode_steps,
        repeats=args.repeats,
        with_hf=not args.no_transformers,
        compile=args.compile,
    )
    _print_result(result, args.json)
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def _random_model(depth: int, dtype: torch.dtype):
    """A random-weight model of nanochat's depth→width rule, with a small trained-free tokenizer."""
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import Tokenizer

    text = [f"benchmark text {i} with numbers {i * 7} and words" for i in range(2000)]
    tokenizer = Tokenizer.train_from_iterator(iter(text), vocab_size=512)
    config = GPTConfig.for_depth(depth, vocab_size=tokenizer.get_vocab_size(), sequence_len=1024)
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(0))
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # zero-init head would make every logit equal
    return model.to(dtype).eval(), tokenizer


# top-level modules of the optional extras (pyproject.toml), for a one-line error where one is missing
OPTIONAL_MODULES = {
    "pyarrow": "train",
    "matplotlib": "train",
    "wandb": "wandb",
    "transformers": "hf",
    "sklearn": "guardrail",
    "skops": "guardrail",
    "peft": "tracks",
    "accelerate": "tracks",
    "tracks": "tracks",  # the learning tracks' package, left out of the serving image
    "bm25s": "rag",
    "faiss": "rag",
    "sentence_transformers": "rag-models",
    "chromadb": "rag-server",
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return args.handler(args)
    except UsageError as e:
        print(f"nanochat: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        if not type(e).__module__.startswith(PROJECT_PACKAGES):
            raise  # a library's ValueError is a bug here, not a user error: keep the traceback
        print(f"nanochat: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        if e.filename is None:
            raise
        print(f"nanochat: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as e:  # an optional extra that is not installed (e.g. in the serving image)
        name = _top_module(e)
        if name not in OPTIONAL_MODULES:
            raise
        extra = OPTIONAL_MODULES[name]
        print(f"nanochat: error: this command needs {name}: pip install 'nanochat-service[{extra}]'",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
