"""The speed table (of the "speed at the hardware's limit" work), measured: the engine's decode at batch 1
and 64, the service at 16 and 64 streams, cold start to `/ready`, for this tree and an earlier commit
measured in the same run, beside the goals. `make bench` prints the engine and cold-start rows, `make
bench-serve` the service rows:

    python -m bench.table                                  # engine + cold start, against HEAD~1
    python -m bench.table --rows service --json            # the service rows, as JSON
    python -m bench.table --rows all --compare-ref 6615845 # every row, against that commit

The model is nanochat's shape at `--depth` 6 (6 layers x 384 wide, 3 heads, 12.2 M parameters) with random
weights, the demo model's tokenizer (vocabulary 2,048) and a context of 1,024 tokens, saved once as a
checkpoint in a scratch folder: both commits measure that one folder (`--checkpoint DIR` measures another).

- engine: `nanochat bench` of each tree in a process of its own (PYTHONPATH at that tree): `--prompt-len`
  32-token prompts, `--decode-steps` 128 greedy decode steps at batch 1 and at `--batch` 64 (rows at mixed
  positions), no transformers baseline.
- service: each tree's `python -m app` on the checkpoint (classifier off, `NANOCHAT_MAX_NUM_SEQS` =
  the most streams, so every stream has a row), then `bench.serve`'s levels at `--streams` 16 and 64 with
  `--max-tokens` 64-token replies: tokens/s and TTFT p95, and the server's resident memory (VmRSS from
  /proc) after each level and at its peak.
- cold start: `bench.cold_start`'s launch of each tree's `python -m app` (default settings) to `/ready` 200.

Each part runs `--rounds` times, the two trees alternating (this, earlier, this, earlier), so the load of
a shared machine falls on both alike; a figure is the best round (the fastest decode, the service round
with the most tokens/s, the quickest start). The column "this / earlier" is the ratio of the two.

The earlier commit (`--compare-ref`, default HEAD~1; `none` skips it) is unpacked with `git archive` into
the scratch folder. A ref that is no commit of this repository is a one-line error before anything runs;
a part the earlier commit cannot run (its benchmark missing or failing) is left empty, its reason under
the table. A measurement, not a test: no figure fails it; it exits 1 only when this tree cannot be
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import cold_start, serve
from nanochat.cliargs import OneLineParser, UsageError, positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO_ROOT / "models" / "demo"
ROWS = ("engine", "service", "cold-start")
CONTEXT = 1024
ENGINE_TIMEOUT_S = 600  # only bounds a hang
GOALS = {
    "engine_batch1_tokens_per_s": 300,
    "engine_batchN_tokens_per_s": 5000,
    "service_16_tokens_per_s": 1500,
    "service_64_tokens_per_s": 2500,
    "service_64_ttft_p95_s": 1.0,
    "cold_start_ready_s": 3.0,
}

SERVICE_GOALS = {
    16: f"≥ {GOALS['service_16_tokens_per_s']:,}",
    64: f"≥ {GOALS['service_64_tokens_per_s']:,}, TTFT p95 ≤ {GOALS['service_64_ttft_p95_s']:g} s",
}


class BenchError(Exception):
    """This tree cannot be measured, or the command line names something that does not exist."""


@dataclass(frozen=True)
class Tree:
    """A source tree to measure: this one, or an earlier commit unpacked."""

    label: str  # "this tree" or the ref as given
    sha: str
    root: Path


# ---- the trees -------------------------------------------------------------------------------------------
def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=120)


def resolve_ref(ref: str) -> str:
    """The commit `ref` names in this repository; a UsageError (one line, exit 2) where it names none."""
    done = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if done.returncode != 0:
        hint = " (a shallow clone has no history: fetch more, or --compare-ref none)" if "~" in ref else ""
        raise UsageError(f"--compare-ref {ref}: not a commit of this repository{hint}")
    return done.stdout.decode().strip()


def this_tree() -> Tree:
    done = git("describe", "--always", "--dirty", "--abbrev=10")
    return Tree("this tree", done.stdout.decode().strip() if done.returncode == 0 else "unknown", REPO_ROOT)


def unpack(ref: str, sha: str, scratch: Path) -> Tree:
    """The tree of commit `sha`, unpacked (git archive) into `scratch`."""
    root = scratch / f"tree-{sha[:10]}"
    archive = scratch / f"{sha[:10]}.tar"
    done = git("archive", "--format=tar", f"--output={archive}", sha)
    if done.returncode != 0:
        raise BenchError(f"--compare-ref {ref}: git archive failed: {done.stderr.decode().strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    return Tree(ref, sha[:10], root)


def has(tree: Tree, path: str) -> str | None:
    """None when `tree` has `path`, else why a part that needs it cannot run there."""
    return None if (tree.root / path).exists() else f"{tree.label} has no {path}"


# ---- the model -----------------------------------------------------------------------------------------
def write_model(folder: Path, depth: int) -> Path:
    """nanochat's shape at `depth` with random weights and the demo tokenizer, as a checkpoint folder."""
    import torch

    from nanochat.checkpoint import save_checkpoint
    from nanochat.gpt import GPT, GPTConfig

    vocab = json.loads(next(DEMO_TOKENIZER.glob("meta_*.json")).read_text())["model_config"]["vocab_size"]
    config = GPTConfig.for_depth(depth, vocab_size=vocab, sequence_len=CONTEXT)
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(0))
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # a zero head would make every logit equal
    meta = {"step": 0, "model_config": config.to_dict(), "user_config": {"made_by": "bench.table"}}
    save_checkpoint(folder, 0, model.state_dict(), meta)
    for name in ("tokenizer.pkl", "token_bytes.pt"):
        shutil.copy(DEMO_TOKENIZER / name, folder / name)
    return folder


def describe_model(checkpoint: Path) -> dict:
    meta = json.loads(sorted(checkpoint.glob("meta_*.json"))[-1].read_text())
    return {"checkpoint": str(checkpoint), **meta["model_config"]}


# ---- the parts -----------------------------------------------------------------------------------------
def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def engine_run(tree: Tree, checkpoint: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """One `nanochat bench` of `tree` (its own process): decode tokens/s at batch 1 and `args.batch`."""
    command = [
        sys.executable, "-m", "nanochat.cli", "bench", "--checkpoint", str(checkpoint),
        "--batches", str(args.batch), "--prompt-len", str(args.prompt_len),
        "--decode-steps", str(args.decode_steps), "--repeats", "1", "--dtype", args.dtype,
        "--no-transformers", "--json",
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(tree.root)}
    done = subprocess.run(
        command, cwd=tree.root, env=env, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S
    )
    if done.returncode != 0:
        raise BenchError(f"nanochat bench of {tree.label} failed: {last_line(done.stderr)}")
    try:
        result = json.loads(done.stdout[done.stdout.index("{") :])
        return {
            "batch1_tokens_per_s": result["decode_batch1_tokens_per_s"],
            "batchN_tokens_per_s": result["decode_aggregate_tokens_per_s"][str(args.batch)],
            "threads": result["threads"],
            "dtype": result["model"]["dtype"],
        }
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"nanochat bench of {tree.label} printed no figures ({e})") from None


def service_run(tree: Tree, checkpoint: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """One server of `tree` under `bench.serve`'s levels; its RSS from /proc."""
    settings = {
        "NANOCHAT_CLASSIFIER": "",
        "NANOCHAT_MAX_NUM_SEQS": str(max(args.streams)),
        **dict(args.server_env),
    }
    env = cold_start.server_env(str(checkpoint), tree.root, settings)
    process, url, log_path = cold_start.launch(env, scratch)
    try:
        argv = [
            "--url", url, "--concurrency", ",".join(map(str, args.streams)),
            "--max-tokens", str(args.max_tokens), "--server-pid", str(process.pid),
            "--wait-ready", str(cold_start.READY_TIMEOUT_S),
        ]  # fmt: skip
        if args.requests_per_level:
            argv += ["--requests-per-level", str(args.requests_per_level)]
        if args.json_share:
            argv += ["--json-share", str(args.json_share)]
        try:
            result = asyncio.run(serve.run_serve_benchmark(serve.build_parser().parse_args(argv)))
        except (serve.BenchError, httpx.HTTPError) as e:
            reason = f"{e}; server: {cold_start.last_line(log_path)}" if process.poll() is not None else e
            raise BenchError(f"the service of {tree.label}: {reason}") from None
    finally:
        cold_start.stop(process)
    memory = result["server_memory"]
    levels = {}
    for streams, level in result["levels"].items():
        ttft = level["ttft_ms"]["p95"]
        after = memory["after_level"].get(streams) or {}
        levels[streams] = {
            "tokens_per_s": level["output_tokens_per_s"],
            "ttft_p95_s": None if ttft is None else round(ttft / 1000, 3),
            "errors": level["errors"],
            "rss_bytes": after.get("rss_bytes"),
            "peak_rss_bytes": after.get("peak_rss_bytes"),
        }
        mixed = result.get("json_levels", {}).get(streams)
        if mixed:  # --json-share: the level again, that share of it constrained by a JSON schema
            levels[streams]["json_tokens_per_s"] = mixed["output_tokens_per_s"]
            levels[streams]["json_errors"] = mixed["errors"]
    return {"settings": settings, "idle_rss_bytes": (memory["idle"] or {}).get("rss_bytes"), "levels": levels}


def cold_start_run(tree: Tree, checkpoint: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """One launch of `tree`'s server (default settings, the classifier on, plus `--server-env`) to /ready."""
    try:
        marks = cold_start.start_once(
            str(checkpoint), True, scratch, tree.root, follow_classifier=False, settings=dict(args.server_env)
        )
    except cold_start.BenchError as e:
        raise BenchError(f"cold start of {tree.label}: {e}") from None
    return {name: marks[name] for name in cold_start.FIGURES}


def best_round(part: str, runs: list[dict]) -> dict:
    """The round a part's figure comes from (see the module docstring)."""
    if part == "engine":
        return {
            **runs[0],
            "batch1_tokens_per_s": max(r["batch1_tokens_per_s"] for r in runs),
            "batchN_tokens_per_s": max(r["batchN_tokens_per_s"] for r in runs),
        }
    if part == "service":
        return max(runs, key=lambda r: sum(level["tokens_per_s"] for level in r["levels"].values()))
    return min(runs, key=lambda r: r["ready_s"])


# each row's measurement and the file a tree needs for it
PARTS = {
    "engine": (engine_run, "nanochat/bench.py"),
    "service": (service_run, "app/__main__.py"),
    "cold-start": (cold_start_run, "app/__main__.py"),
}


# ---- the run -------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict:
    """Every figure as a JSON-able dict."""
    rows = ROWS if "all" in args.rows else tuple(r for r in ROWS if r in args.rows)
    sha = resolve_ref(args.compare_ref) if args.compare_ref != "none" else None  # before anything runs
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise BenchError(f"--checkpoint: no such folder {args.checkpoint}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-table-") as tmp:
        scratch = Path(tmp)
        checkpoint = (
            Path(args.checkpoint).resolve() if args.checkpoint else write_model(scratch / "model", args.depth)
        )
        trees = [this_tree()]
        if sha is not None:
            trees.append(unpack(args.compare_ref, sha, scratch))
        runs: dict[str, dict[str, list[dict]]] = {tree.label: {row: [] for row in rows} for tree in trees}
        skipped: dict[str, dict[str, str]] = {tree.label: {} for tree in trees}
        for row in rows:
            for _ in range(args.rounds):
                for tree in trees:
                    if row in skipped[tree.label]:
                        continue
                    run, needs = PARTS[row]
                    missing = has(tree, needs)
                    if missing:
                        skipped[tree.label][row] = missing
                        continue
                    try:
                        figures = run(tree, checkpoint, args, scratch)
                    except BenchError as e:
                        if tree is trees[0]:
                            raise
                        skipped[tree.label][row] = str(e)
                        continue
                    runs[tree.label][row].append(figures)
        commits = {}
        for tree in trees:
            figures = {row: best_round(row, r) for row, r in runs[tree.label].items() if r}
            commits[tree.label] = {
                "sha": tree.sha,
                "figures": figures,
                "rounds": runs[tree.label],
                "skipped": skipped[tree.label],
            }
        result = {
            "model": describe_model(checkpoint),
            "settings": {
                "rows": list(rows),
                "rounds": args.rounds,
                "prompt_len": args.prompt_len,
                "decode_steps": args.decode_steps,
                "batch": args.batch,
                "dtype": args.dtype,
                "streams": args.streams,
                "max_tokens": args.max_tokens,
                "json_share": args.json_share,
                "server_env": dict(args.server_env),
            },
            "commits": commits,
            "goals": GOALS,
            "load_average_1m": round(load_before, 2),
            "cpus": os.cpu_count(),
        }
    result["table"] = markdown_table(result)
    return result


# ---- the table -----------------------------------------------------------------------------------------
def _n(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    return (f"{value:,.0f}" if value >= 100 else f"{value:.3g}") + unit


def _start(marks: dict) -> str:
    if not marks:
        return "–"
    cpu = marks.get("ready_cpu_s")
    return _n(marks["ready_s"], " s") + (f" ({cpu:.2g} s CPU)" if cpu is not None else "")


def _ratio(this: float | None, earlier: float | None) -> str:
    return f"{this / earlier:.2f}x" if this and earlier else "–"


def table_rows(result: dict) -> list[tuple[str, list[tuple[str, float | None]], str]]:
    """(label, [(cell text, the figure the ratio compares)] per commit, goal) for each row measured."""
    settings, commits = result["settings"], list(result["commits"].values())
    rows = []
    figures = [c["figures"] for c in commits]
    if "engine" in settings["rows"]:
        engine = [f.get("engine") or {} for f in figures]
        threads = next((e["threads"] for e in engine if e), None)
        rows.append(
            (
                f"engine decode, batch 1 (tok/s, {settings['dtype']})",
                [(_n(e.get("batch1_tokens_per_s")), e.get("batch1_tokens_per_s")) for e in engine],
                f"≥ {GOALS['engine_batch1_tokens_per_s']:,}",
            )
        )
        rows.append(
            (
                f"engine decode, batch {settings['batch']}, {threads} threads (tok/s, all rows)",
                [(_n(e.get("batchN_tokens_per_s")), e.get("batchN_tokens_per_s")) for e in engine],
                f"≥ {GOALS['engine_batchN_tokens_per_s']:,}",
            )
        )
    if "service" in settings["rows"]:
        for i, streams in enumerate(settings["streams"]):
            cells = []
            for f in figures:
                level = (f.get("service") or {"levels": {}})["levels"].get(str(streams)) or {}
                text = f"{_n(level.get('tokens_per_s'))}, TTFT p95 {_n(level.get('ttft_p95_s'), ' s')}"
                if i == len(settings["streams"]) - 1 and level.get("peak_rss_bytes"):
                    text += f", peak RSS {level['peak_rss_bytes'] / 2**20:,.0f} MiB"
                if level.get("errors"):
                    text += f", {level['errors']} errors"
                cells.append((text if level else "–", level.get("tokens_per_s")))
            goal = SERVICE_GOALS.get(streams, "")
            label = f"service, {streams} streams, {settings['max_tokens']}-token replies (tok/s)"
            rows.append((label, cells, goal))
            if settings.get("json_share"):
                cells = []
                for f in figures:
                    level = (f.get("service") or {"levels": {}})["levels"].get(str(streams)) or {}
                    mixed, free = level.get("json_tokens_per_s"), level.get("tokens_per_s")
                    text = f"{_n(mixed)} ({_ratio(mixed, free)} of free)" if mixed else "–"
                    cells.append((text, mixed))
                share = f"{settings['json_share']:.0%}"
                label = f"service, {streams} streams, {share} of requests JSON-schema constrained (tok/s)"
                rows.append((label, cells, f"≥ {serve.TARGET_JSON_VS_FREE:.0%} of free"))
    if "cold-start" in settings["rows"]:
        starts = [f.get("cold-start") or {} for f in figures]
        # the ratio of times the other way round, so that > 1 means faster here too
        cells = [(_start(s), 1 / s["ready_s"] if s else None) for s in starts]
        rows.append(("cold start to `/ready`, this model", cells, f"≤ {GOALS['cold_start_ready_s']:g} s"))
    return rows


def markdown_table(result: dict) -> str:
    commits = result["commits"]
    header = [f"{label} ({c['sha']})" for label, c in commits.items()]
    compare = len(commits) == 2
    columns = ["", *header, *(["this / earlier"] if compare else []), "goal"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for label, cells, goal in table_rows(result):
        ratio = [_ratio(cells[0][1], cells[1][1])] if compare else []
        lines.append("| " + " | ".join([label, *(text for text, _ in cells), *ratio, goal]) + " |")
    model = result["model"]
    lines.append("")
    lines.append(
        f"Model {model['n_layer']} x {model['n_embd']}, {model['n_head']} heads, vocabulary "
        f"{model['vocab_size']:,}; best of {result['settings']['rounds']} interleaved rounds; "
        f"{result['cpus']} CPUs, load average {result['load_average_1m']} at the start."
    )
    for label, c in commits.items():
        for row, reason in c["skipped"].items():
            lines.append(f"{label}: {row} not measured: {reason}")
    return "\n".join(lines)


# ---- the command ---------------------------------------------------------------------------------------
def _rows(text: str) -> list[str]:
    rows = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(rows) - {*ROWS, "all"})
    if not rows or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(ROWS)} or all, got {text!r}")
    return rows


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("NANOCHAT_"):
        raise argparse.ArgumentTypeError(f"expected NANOCHAT_NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench.table", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        type=_rows,
        default=["engine", "cold-start"],
        help="engine, service, cold-start or all, comma-separated (default engine,cold-start)",
    )
    parser.add_argument(
        "--compare-ref",
        default="HEAD~1",
        metavar="REV",
        help="the earlier commit measured beside this tree (default HEAD~1; none: skip)",
    )
    parser.add_argument("--rounds", type=positive_int, default=2, help="rounds per tree, interleaved (2)")
    parser.add_argument("--checkpoint", metavar="DIR", help="measure this checkpoint (default: a random one)")
    parser.add_argument("--depth", type=positive_int, default=6, help="the random model's depth (6)")
    parser.add_argument("--dtype", default="float32", help="engine rows' dtype, as nanochat bench takes it")
    parser.add_argument("--threads", type=positive_int, help="engine rows' torch threads (torch's choice)")
    parser.add_argument("--batch", type=positive_int, default=64, help="the large decode batch (64)")
    parser.add_argument("--prompt-len", type=positive_int, default=32, help="engine prompt tokens (32)")
    parser.add_argument("--decode-steps", type=positive_int, default=128, help="engine decode steps (128)")
    parser.add_argument("--streams", type=serve._levels, default=[16, 64], help="service levels (16,64)")
    parser.add_argument("--max-tokens", type=positive_int, default=64, help="service reply tokens (64)")
    parser.add_argument(
        "--requests-per-level", type=positive_int, help="service requests per level (default 4 x streams)"
    )
    parser.add_argument(
        "--server-env",
        type=_setting,
        action="append",
        default=[],
        metavar="NANOCHAT_X=V",
        help="a setting for the servers of both trees (service and cold start rows), repeatable",
    )
    parser.add_argument(
        "--json-share",
        type=serve._share,
        default=0.0,
        metavar="F",
        help="service rows: also each level with this share of requests JSON-schema constrained (0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (the table in it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        started = time.monotonic()
        result = measure(args)
    except (UsageError, BenchError) as e:
        print(f"bench_table: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2) if args.json else result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
