"""`nanochat sweep`: a scaling sweep over depths, one recipe, then a report of quality, cost and latency.

Each depth trains with `train_base` on the same data, tokens and hyperparameters (width from depth as
`GPTConfig.for_depth` derives it) into `OUT/dDEPTH/`, then its checkpoint is measured with the engine
(decode tokens/s at batch 1 and 16, `nanochat.bench.run_benchmark`). One depth's figures go to
`OUT/dDEPTH/result.json`, written atomically when the depth is done:
- a rerun skips every depth that has its result.json;
- a depth killed while training resumes from its last complete checkpoint (`--resume`, exact: optimizer,
  RNG and data position), which `save_every` puts about every quarter of the run;
- a depth killed after training (while benchmarking) is benchmarked again, not retrained.

Cost per million output tokens: on the Cloud Run shape of an env file (its vCPU and memory, prices from
nanochat/prices.py) at the decode rate measured here, and on the GPU group's machine (its L4) at a
roofline estimate (see `l4_decode_estimate`), never measured here. The report (`sweep_report`) fits a
power law bpb = a·X^b (least squares in log space) to parameters and to training FLOPs, plots cost against
quality and latency, and applies `RECOMMENDATION_RULE`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanochat.files import write_text_atomically
from nanochat.prices import cloud_run_price_per_hour, dollars_per_million_tokens, machine_price_per_hour
from nanochat.train.config import ConfigError

RESULT_FILE = "result.json"
BENCH_BATCHES = (1, 16)
# NVIDIA L4 (datasheet): 300 GB/s memory bandwidth; its bf16 dense peak is nanochat.train.common's table
L4_MEMORY_BYTES_PER_S = 300e9
# eager PyTorch decode on a GPU pays kernel launches per layer per step whatever the model's size (about 8
# kernels of ~5 µs): an assumption of this estimate, which matters only for the smallest models
L4_SECONDS_PER_LAYER_STEP = 40e-6
LATENCY_BUDGET_MS = 50.0  # per output token at batch 1: 20 tokens/s, faster than anyone reads
QUALITY_SLACK = 0.05
RECOMMENDATION_RULE = (
    f"the smallest model whose final val bpb is within {QUALITY_SLACK:.0%} of the sweep's best and whose "
    f"batch-1 decode on the Cloud Run CPU takes at most {LATENCY_BUDGET_MS:g} ms a token; served on "
    "whichever of the Cloud Run CPU shape and the L4 VM costs less per million tokens at batch 16"
)


@dataclass
class SweepConfig:
    data: str  # folder of parquet shards (the last one is validation)
    tokenizer: str  # folder with tokenizer.pkl
    out: str  # sweep folder: one run folder per depth, report.md and plots
    depths: list[int] = field(default_factory=lambda: [2, 4, 6, 8])
    tokens: int = 1_000_000  # training tokens per depth
    max_seq_len: int = 256
    device_batch_size: int = 8
    eval_batches: int = 8
    checkpoints: int = 4  # checkpoints per depth's run (the resume points)
    env_file: str = "envs/prod.yaml"  # the Cloud Run shape and GPU machine to price
    bench_decode_steps: int = 16
    bench_repeats: int = 2
    device: str = "cpu"
    seed: int = 1234
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.depths or any(d < 1 for d in self.depths):
            raise ConfigError(f"depths must be positive integers, got {self.depths}")
        if len(set(self.depths)) != len(self.depths):
            raise ConfigError(f"depths repeat: {self.depths}")
        self.depths = sorted(self.depths)
        for name in ("tokens", "max_seq_len", "device_batch_size", "eval_batches", "checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def tokens_per_step(self) -> int:
        return self.device_batch_size * self.max_seq_len

    @property
    def num_iterations(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_step))


def run_dir(config: SweepConfig, depth: int) -> Path:
    return Path(config.out) / f"d{depth}"


def base_config(config: SweepConfig, depth: int, resume: bool):
    from nanochat.train.base import BaseConfig

    steps = config.num_iterations
    return BaseConfig(
        data=config.data,
        tokenizer=config.tokenizer,
        out=str(run_dir(config, depth)),
        depth=depth,
        max_seq_len=config.max_seq_len,
        device_batch_size=config.device_batch_size,
        num_iterations=steps,
        eval_every=max(1, steps // 4),
        eval_batches=config.eval_batches,
        save_every=max(1, steps // config.checkpoints),
        keep_last=2,
        seed=config.seed,
        device=config.device,
        resume=resume,
        progress=config.progress,
        run_name=f"sweep-d{depth}",
    )


def deployment_shapes(env_file: str | Path) -> dict[str, Any]:
    """The Cloud Run service's vCPU/GiB and the GPU group's machine type from an envs/*.yaml."""
    import yaml

    from nanochat.eval.quantization import cloud_shape

    try:
        shape = cloud_shape(Path(env_file))
        env = yaml.safe_load(Path(env_file).read_text())
    except OSError as e:
        raise ConfigError(f"env file {env_file}: {e.strerror}") from e
    return {
        "env_file": str(env_file),
        "cloud_run_vcpu": shape.app_vcpu,
        "cloud_run_gib": shape.app_gib,
        "gpu_machine_type": (env.get("gpu") or {}).get("machine_type", "g2-standard-8"),
    }


def l4_decode_estimate(parameters: int, n_layer: int, batch: int) -> float:
    """Decode tokens/s on one L4 in bf16 (an estimate, never measured here): each step reads every weight
    once (memory bound), does 2·parameters FLOPs per row (compute bound), and pays a fixed launch cost per
    layer; the slowest of the first two plus the third."""
    from nanochat.train.common import PEAK_BF16_FLOPS

    memory_s = 2 * parameters / L4_MEMORY_BYTES_PER_S
    compute_s = 2 * parameters * batch / PEAK_BF16_FLOPS["L4"]
    step_s = max(memory_s, compute_s) + n_layer * L4_SECONDS_PER_LAYER_STEP
    return batch / step_s


def measure_engine(checkpoint: Path, config: SweepConfig) -> dict[str, float]:
    """Decode tokens/s of the trained checkpoint, fp32 on this CPU, at each of BENCH_BATCHES."""
    from nanochat.bench import run_benchmark
    from nanochat.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    result = run_benchmark(
        loaded.model,
        loaded.tokenizer,
        batches=tuple(b for b in BENCH_BATCHES if b > 1),
        prompt_len=32,
        decode_steps=config.bench_decode_steps,
        repeats=config.bench_repeats,
        with_hf=False,
    )
    speeds = {"1": result["decode_batch1_tokens_per_s"], **result["decode_aggregate_tokens_per_s"]}
    return {str(b): speeds[str(b)] for b in BENCH_BATCHES}


def run_depth(config: SweepConfig, depth: int, shapes: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one depth, benchmark it, write and return its result."""
    import torch

    from nanochat.checkpoint import checkpoint_steps, meta_path
    from nanochat.train.base import train_base
    from nanochat.train.distributed import init_distributed, shutdown
    from nanochat.train.tracking import SUMMARY_FILE

    folder = run_dir(config, depth)
    summary_path = folder / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    resumed_from = None
    if summary.get("final_step") != config.num_iterations or summary.get("status") != "ok":
        complete = [s for s in checkpoint_steps(folder) if meta_path(folder, s).is_file()]
        resumed_from = complete[-1] if complete else None
        ctx = init_distributed(config.device)
        try:
            summary = train_base(base_config(config, depth, resume=resumed_from is not None), ctx)
        finally:
            shutdown(ctx)
        summary.pop("status", None)
    threads = torch.get_num_threads()
    engine = measure_engine(folder, config)
    model_config = json.loads((folder / "config.json").read_text())["config"]["model_config"]
    parameters = summary["parameters"]
    tokens = summary["tokens_per_step"] * summary["final_step"]
    cpu_hour = cloud_run_price_per_hour(shapes["cloud_run_vcpu"], shapes["cloud_run_gib"])
    gpu_hour = machine_price_per_hour(shapes["gpu_machine_type"])
    l4 = {str(b): round(l4_decode_estimate(parameters, depth, b), 1) for b in BENCH_BATCHES}
    result = {
        "depth": depth,
        "width": model_config["n_embd"],
        "heads": model_config["n_head"],
        "parameters": parameters,
        "training_tokens": tokens,
        "flops_per_token": summary["flops_per_token"],
        "training_flops": summary["flops_per_token"] * tokens,
        "val_bpb": summary["val_bpb"],
        "min_val_bpb": summary["min_val_bpb"],
        "final_train_loss": summary.get("final_train_loss"),
        "training_tok_per_s": summary.get("tokens_per_second"),
        "training_seconds": summary.get("training_seconds"),
        "resumed_from_step": resumed_from,
        "engine_tok_per_s": engine,
        "engine_threads": threads,
        # timings on a shared machine mean little without its load: 1-minute load average, and its CPUs
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "l4_tok_per_s_estimate": l4,
        "dollars_per_million_tokens": {
            f"cloud_run_cpu_batch{b}": _significant(dollars_per_million_tokens(cpu_hour, engine[str(b)]))
            for b in BENCH_BATCHES
        }
        | {
            f"l4_vm_batch{b}_estimate": _significant(dollars_per_million_tokens(gpu_hour, l4[str(b)]))
            for b in BENCH_BATCHES
        },
        "price_per_hour": {
            "cloud_run_instance": round(cpu_hour, 4),
            "gpu_vm": gpu_hour,
            "gpu_machine_type": shapes["gpu_machine_type"],
        },
    }
    write_text_atomically(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def run_sweep(config: SweepConfig, log=print) -> list[dict[str, Any]]:
    """Every depth in turn (skipping finished ones), then the report; returns the results by depth."""
    shapes = deployment_shapes(config.env_file)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "sweep.json", json.dumps({**asdict(config), **shapes}, indent=2) + "\n")
    results = []
    for depth in config.depths:
        path = run_dir(config, depth) / RESULT_FILE
        if path.is_file():
            log(f"sweep: d{depth} done before, skipped ({path})")
            results.append(json.loads(path.read_text()))
            continue
        log(f"sweep: d{depth}: {config.num_iterations} steps of {config.tokens_per_step} tokens")
        results.append(run_depth(config, depth, shapes))
        r = results[-1]
        log(f"sweep: d{depth}: {r['parameters']:,} parameters, val bpb {r['val_bpb']:.4f}")
    report = sweep_report(out, results, config)
    log(f"sweep: report -> {report}")
    return results


def power_law(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """(a, b) of y = a·x^b fitted by least squares on log y = log a + b·log x; None under two points."""
    import numpy as np

    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    b, log_a = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(math.exp(log_a)), float(b)


def recommend(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply RECOMMENDATION_RULE to the results."""
    best = min(r["val_bpb"] for r in results)
    good = [r for r in results if r["val_bpb"] <= best * (1 + QUALITY_SLACK)]
    fast = [r for r in good if 1000 / r["engine_tok_per_s"]["1"] <= LATENCY_BUDGET_MS]
    pick = min(fast or good, key=lambda r: r["parameters"])
    costs = pick["dollars_per_million_tokens"]
    cpu, gpu = costs["cloud_run_cpu_batch16"], costs["l4_vm_batch16_estimate"]
    return {
        "depth": pick["depth"],
        "meets_latency_budget": bool(fast),
        "serve_on": "Cloud Run CPU" if cpu <= gpu else "L4 VM",
        "dollars_per_million_tokens": min(cpu, gpu),
    }


def sweep_report(out: Path, results: list[dict[str, Any]], config: SweepConfig) -> Path:
    """report.md + bpb_scaling.png + cost_quality_latency.png in `out`, and each depth's run report."""
    from nanochat.eval.run_report import compare_runs, render_run

    results = sorted(results, key=lambda r: r["depth"])
    fits = {
        "parameters": power_law([r["parameters"] for r in results], [r["val_bpb"] for r in results]),
        "training FLOPs": power_law([r["training_flops"] for r in results], [r["val_bpb"] for r in results]),
    }
    plot_scaling(results, fits, out / "bpb_scaling.png")
    plot_cost(results, out / "cost_quality_latency.png")
    rows = [
        "| depth | width | parameters | training FLOPs | val bpb | train tok/s | engine tok/s b1 / b16 | "
        "ms/token b1 | $/M tokens Cloud Run b16 | $/M tokens L4 b16 (est.) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        engine, cost = r["engine_tok_per_s"], r["dollars_per_million_tokens"]
        rows.append(
            f"| {r['depth']} | {r['width']} | {r['parameters']:,} | {r['training_flops']:.3g} | "
            f"{r['val_bpb']:.4f} | {_fmt(r['training_tok_per_s'])} | "
            f"{engine['1']:,.0f} / {engine['16']:,.0f} | "
            f"{1000 / engine['1']:.1f} | ${cost['cloud_run_cpu_batch16']:.4f} | "
            f"${cost['l4_vm_batch16_estimate']:.4f} |"
        )
    fit_lines = []
    for name, fit in fits.items():
        if fit is None:
            fit_lines.append(f"- bpb vs {name}: fewer than two sizes, no fit")
        else:
            fit_lines.append(f"- bpb vs {name}: bpb = {fit[0]:.4g} · x^{fit[1]:.4f} (exponent {fit[1]:.4f})")
    pick = recommend(results)
    price = results[0]["price_per_hour"]
    for r in results:
        folder = run_dir(config, r["depth"])
        if (folder / "config.json").is_file():
            render_run(folder)
    compared = [run_dir(config, r["depth"]) for r in results]
    parts = [
        "# Scaling sweep",
        f"Depths {', '.join(str(r['depth']) for r in results)}, {config.tokens:,} training tokens each "
        f"({config.num_iterations} steps of {config.tokens_per_step} tokens, sequence {config.max_seq_len}), "
        f"same recipe (nanochat base defaults), on `{config.device}`. Written by `nanochat sweep`; every "
        f"figure below is in `dN/result.json`, each run's own report in `dN/report/report.md` "
        f"(`nanochat report`).",
        "## Results",
        "\n".join(rows),
        "## Power-law fits (least squares in log space)",
        "\n".join(fit_lines),
        "![bpb vs parameters and FLOPs](bpb_scaling.png)",
        "## Cost, quality and latency",
        f"Cloud Run: one instance of `{config.env_file}` (app + sidecar) at "
        f"${price['cloud_run_instance']}/hour (nanochat/prices.py), at the batch-16 decode rate measured "
        f"here (fp32, {results[0]['engine_threads']} CPU threads). L4 VM: `{price['gpu_machine_type']}` on "
        f"demand at ${price['gpu_vm']}/hour, at a roofline *estimate* of bf16 decode (300 GB/s, "
        "121 TFLOP/s, 40 µs per layer per step), not a measurement.",
        "Load on the machine (1-minute load average over its CPUs, after each depth's benchmark): "
        + ", ".join(
            f"d{r['depth']} {r['load_average_1m']} / {r['cpus']}"
            if "load_average_1m" in r
            else f"d{r['depth']} –"
            for r in results
        )
        + ". Tokens/s measured on a loaded machine are lower bounds.",
        "![cost vs quality vs latency](cost_quality_latency.png)",
        "## Recommendation",
        f"Rule: {RECOMMENDATION_RULE}.",
        f"**d{pick['depth']}**, served on the **{pick['serve_on']}** at about "
        f"${pick['dollars_per_million_tokens']:.4f} per million output tokens"
        + (
            ""
            if pick["meets_latency_budget"]
            else " (no size within the quality slack meets the latency budget)"
        )
        + ".",
    ]
    if len(compared) >= 2:
        parts += ["## Runs side by side (`nanochat report compare`)", compare_runs(compared)]
    path = out / "report.md"
    write_text_atomically(path, "\n\n".join(parts) + "\n")
    return path


def _significant(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant figures (cents per million tokens and fractions of them alike)."""
    return float(f"{value:.{digits}g}")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def plot_scaling(results: list[dict], fits: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for ax, (name, key) in zip(
        axes, (("parameters", "parameters"), ("training FLOPs", "training_flops")), strict=True
    ):
        xs = [r[key] for r in results]
        ys = [r["val_bpb"] for r in results]
        ax.scatter(xs, ys)
        for r, x, y in zip(results, xs, ys, strict=True):
            ax.annotate(f"d{r['depth']}", (x, y), textcoords="offset points", xytext=(4, 4))
        fit = fits[name]
        if fit is not None:
            import numpy as np

            grid = np.geomspace(min(xs), max(xs), 50)
            ax.plot(grid, fit[0] * grid ** fit[1], linestyle="--", label=f"fit: exponent {fit[1]:.3f}")
            ax.legend()
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("val bpb")
        ax.grid(alpha=0.3, which="both")
    figure.savefig(path, dpi=100)


def plot_cost(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    cost_ax, latency_ax = figure.subplots(1, 2)
    bpb = [r["val_bpb"] for r in results]
    for key, label in (
        ("cloud_run_cpu_batch16", "Cloud Run CPU (measured)"),
        ("l4_vm_batch16_estimate", "L4 VM (estimate)"),
    ):
        cost_ax.plot([r["dollars_per_million_tokens"][key] for r in results], bpb, marker="o", label=label)
    for r in results:
        cost_ax.annotate(
            f"d{r['depth']}", (r["dollars_per_million_tokens"]["cloud_run_cpu_batch16"], r["val_bpb"])
        )
    cost_ax.set_xscale("log")
    cost_ax.set_xlabel("$ per million output tokens, batch 16")
    cost_ax.set_ylabel("val bpb")
    cost_ax.legend()
    cost_ax.grid(alpha=0.3)
    latency = [1000 / r["engine_tok_per_s"]["1"] for r in results]
    latency_ax.plot(latency, bpb, marker="o")
    for r, x in zip(results, latency, strict=True):
        latency_ax.annotate(f"d{r['depth']}", (x, r["val_bpb"]))
    latency_ax.axvline(LATENCY_BUDGET_MS, linestyle="--", color="grey", label="latency budget")
    latency_ax.set_xlabel("ms per output token, batch 1 (measured on this CPU)")
    latency_ax.set_ylabel("val bpb")
    latency_ax.legend()
    latency_ax.grid(alpha=0.3)
    figure.savefig(path, dpi=100)


def _parse_depths(text: str) -> list[int]:
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise ConfigError(f"--depths must be integers separated by commas, got {text!r}") from None
    return depths


def cmd_sweep(args) -> int:
    values = {k: v for k, v in vars(args).items() if k in SweepConfig.__dataclass_fields__ and v is not None}
    values["depths"] = _parse_depths(args.depths)
    run_sweep(SweepConfig(**values))
    return 0


def register(sub) -> None:
    defaults = SweepConfig(data="", tokenizer="", out="")
    sweep = sub.add_parser(
        "sweep",
        help="scaling sweep: train each depth with one recipe, measure, report cost/quality/latency",
        description="Train one base model per depth on the same tokens, measure bpb, speed and serving "
        "cost, and write OUT/report.md with plots. A rerun skips finished depths and resumes a killed one.",
    )
    sweep.add_argument("--data", required=True, help="folder of parquet shards (the last one is validation)")
    sweep.add_argument("--tokenizer", required=True, help="tokenizer folder (tokenizer.pkl)")
    sweep.add_argument("--out", required=True, help="sweep folder (one dN/ run folder per depth)")
    sweep.add_argument("--depths", default="2,4,6,8", help="comma-separated depths (default 2,4,6,8)")
    sweep.add_argument("--tokens", type=int, help=f"training tokens per depth (default {defaults.tokens:,})")
    sweep.add_argument("--max-seq-len", type=int, help=f"sequence length (default {defaults.max_seq_len})")
    sweep.add_argument(
        "--device-batch-size", type=int, help=f"sequences per step ({defaults.device_batch_size})"
    )
    sweep.add_argument("--eval-batches", type=int, help=f"validation batches ({defaults.eval_batches})")
    sweep.add_argument("--checkpoints", type=int, help=f"resume points per depth ({defaults.checkpoints})")
    sweep.add_argument("--env-file", help=f"env file whose shapes are priced (default {defaults.env_file})")
    sweep.add_argument("--bench-decode-steps", type=int, help="decode steps timed per batch (default 16)")
    sweep.add_argument("--bench-repeats", type=int, help="best of N decode timings (default 2)")
    sweep.add_argument("--device", help="training device (default cpu)")
    sweep.set_defaults(handler=cmd_sweep)
