"""Decode speed of the two backends side by side on the demo model: nanochat's `Engine` on `models/demo` and
`HFEngine` on the same model exported with `nanochat export hf`. Run

    python -m bench.hf_backend --compare-ref 91369ee

With `--compare-ref REF`, the `HFEngine` of that commit (`git show REF:nanochat/hf_engine.py`, loaded as its
own module over today's `nanochat.batching`) is measured too: the engine before the row cache, which
copied every sequence's keys and values into a padded batch each step.

Each measurement begins `streams` greedy generations of mixed prompt lengths (so rows decode at different
positions), prefills them (not timed) and times `--steps` batched decode steps: decode tokens/s over all
rows. The engines take turns, round after round (A/B/C, A/B/C, ...), so load on a shared machine falls on
each alike; a figure is the median over rounds. It prints one JSON object: the figures, the ratios (HF new /
nanochat, HF new / HF at REF) and the load average at the start. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "models" / "demo"


def decode_tokens_per_s(engine, prompts: list[list[int]], steps: int) -> float:
    """`steps` decode steps over one row per prompt, after prefilling them all (untimed)."""
    from nanochat.bench import decode_seconds

    return len(prompts) * steps / decode_seconds(engine, prompts, steps)


def engine_at(ref: str):
    """The `HFEngine` class of nanochat/hf_engine.py at git `ref`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{ref}:nanochat/hf_engine.py"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if source.returncode != 0:
        raise SystemExit(f"--compare-ref {ref}: {source.stderr.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hf_engine_at_ref.py"
        path.write_text(source.stdout)
        spec = importlib.util.spec_from_file_location("hf_engine_at_ref", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.HFEngine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-ref", help="also measure the HFEngine of this git commit")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: see the docstring)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from nanochat.checkpoint import load_checkpoint
    from nanochat.engine import Engine
    from nanochat.hf_engine import HFEngine
    from nanochat.hf_export import export_hf

    earlier = engine_at(args.compare_ref) if args.compare_ref else None
    load = os.getloadavg()[0]
    batch = max(args.streams)
    ours = load_checkpoint(DEMO)
    engines = {"nanochat": Engine(ours.model, ours.tokenizer, max_batch=batch)}
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(DEMO, Path(tmp) / "demo")
        engines["hf"] = HFEngine.from_pretrained(Path(tmp) / "demo", max_batch=batch)
        if earlier is not None:
            engines[f"hf@{args.compare_ref}"] = earlier.from_pretrained(Path(tmp) / "demo", max_batch=batch)

    vocab = ours.tokenizer.get_vocab_size()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (16 + 4 * i,), generator=generator).tolist() for i in range(batch)]
    for engine in engines.values():  # warm-up
        decode_tokens_per_s(engine, prompts[:batch], 4)
    samples: dict[str, dict[int, list[float]]] = {name: {s: [] for s in args.streams} for name in engines}
    for _ in range(args.rounds):
        for streams in args.streams:
            for name, engine in engines.items():
                samples[name][streams].append(decode_tokens_per_s(engine, prompts[:streams], args.steps))

    tokens_per_s = {
        name: {str(s): round(statistics.median(v), 1) for s, v in by_streams.items()}
        for name, by_streams in samples.items()
    }
    ratios = {}
    for s in map(str, args.streams):
        ratios[f"hf_vs_nanochat_{s}"] = round(tokens_per_s["hf"][s] / tokens_per_s["nanochat"][s], 2)
        if args.compare_ref:
            old = tokens_per_s[f"hf@{args.compare_ref}"][s]
            ratios[f"hf_vs_hf@{args.compare_ref}_{s}"] = round(tokens_per_s["hf"][s] / old, 2)
    result = {
        "model": "models/demo (nanochat) and its `nanochat export hf` folder (HF)",
        "threads": args.threads,
        "decode_steps": args.steps,
        "rounds": args.rounds,
        "prompt_tokens": [len(p) for p in prompts],
        "decode_tokens_per_s": tokens_per_s,
        "ratios": ratios,
        "load_average_1m": round(load, 2),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
