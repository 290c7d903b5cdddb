"""`nanochat report RUN_DIR` and `nanochat report compare RUN…`: a report from whatever a run folder holds.

A run folder is what the trainers leave (nanochat/train/tracking.py, nanochat/checkpoint.py): `config.json`
(config + environment + git), `metrics.jsonl` (curves), `summary.json` (final figures), `meta_NNNNNN.json`
(checkpoints and their val bpb), and, where they were made, `report.json` (`nanochat eval report`) and
`result.json` (one size of `nanochat sweep`). Each is optional: the report says what it found, it never
trains, evaluates or loads a model. `compare` puts the same key figures side by side, with each run's
difference to the first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nanochat.checkpoint import checkpoint_steps, meta_path
from nanochat.files import write_text_atomically
from nanochat.train.checkpoint_writer import best_step
from nanochat.train.tracking import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    key_value_table,
    markdown_table,
    plot_panels,
    read_metrics,
)

REPORT_DIR = "report"  # inside the run folder, beside the trainer's own report.md
CURVES_FILE = "curves.png"
CURVES = ("train_loss", "val_bpb", "tok_per_s")
# the figures `compare` lines up, in order: (label, key in `key_figures`, lower is better)
COMPARED = (
    ("parameters", "parameters", None),
    ("steps", "steps", None),
    ("final val bpb", "val_bpb", True),
    ("best val bpb", "min_val_bpb", True),
    ("final train loss", "final_train_loss", True),
    ("median train tok/s", "median_tok_per_s", False),
    ("training seconds", "training_seconds", True),
    ("engine tok/s, batch 1", "engine_tok_per_s_batch1", False),
    ("engine tok/s, batch 16", "engine_tok_per_s_batch16", False),
)


class RunReportError(ValueError):
    """A run folder that cannot be reported on."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise RunReportError(f"{path} is not readable JSON: {e}") from e
    return value if isinstance(value, dict) else {}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything the folder holds that a report uses; RunReportError if it holds none of it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunReportError(f"run folder not found: {run_dir}")
    config = _read_json(run_dir / CONFIG_FILE)
    metrics = read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []
    steps = [s for s in checkpoint_steps(run_dir) if meta_path(run_dir, s).is_file()]
    checkpoints = []
    for step in steps:
        meta = _read_json(meta_path(run_dir, step))
        checkpoints.append({"step": step, "val_bpb": meta.get("val_bpb")})
    run = {
        "dir": run_dir,
        "name": run_dir.name if run_dir.name not in ("run", "base", "sft") else str(run_dir),
        "config": config.get("config", {}),
        "environment": config.get("run", {}),
        "metrics": metrics,
        "summary": _read_json(run_dir / SUMMARY_FILE),
        "checkpoints": checkpoints,
        "best_step": best_step(run_dir, steps),
        "eval": _read_json(run_dir / "report.json"),
        "sweep": _read_json(run_dir / "result.json"),
    }
    if not (config or metrics or checkpoints or run["eval"] or run["sweep"]):
        raise RunReportError(
            f"{run_dir} holds no run files "
            "(config.json, metrics.jsonl, meta_*.json, report.json, result.json)"
        )
    return run


def key_figures(run: dict[str, Any]) -> dict[str, Any]:
    """The run's headline numbers, from the summary where it has them, else from metrics and metas."""
    metrics, summary, sweep = run["metrics"], run["summary"], run["sweep"]
    bpbs = [m["val_bpb"] for m in metrics if m.get("val_bpb") is not None]
    losses = [m["train_loss"] for m in metrics if m.get("train_loss") is not None]
    speeds = sorted(m["tok_per_s"] for m in metrics if m.get("tok_per_s"))
    figures: dict[str, Any] = {
        "parameters": summary.get("parameters", run["config"].get("parameters")),
        "steps": max((m["step"] for m in metrics), default=None),
        "val_bpb": summary.get("val_bpb", bpbs[-1] if bpbs else None),
        "min_val_bpb": summary.get("min_val_bpb", min(bpbs) if bpbs else None),
        "final_train_loss": summary.get("final_train_loss", losses[-1] if losses else None),
        "median_tok_per_s": speeds[len(speeds) // 2] if speeds else None,
        "training_seconds": summary.get("training_seconds"),
        "engine_tok_per_s_batch1": sweep.get("engine_tok_per_s", {}).get("1"),
        "engine_tok_per_s_batch16": sweep.get("engine_tok_per_s", {}).get("16"),
    }
    if figures["steps"] is None and run["checkpoints"]:
        figures["steps"] = run["checkpoints"][-1]["step"]
    if figures["val_bpb"] is None and run["checkpoints"]:
        figures["val_bpb"] = run["checkpoints"][-1]["val_bpb"]
    return figures


def render_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.md (+ curves.png when the metrics have curves) into `out` (default RUN_DIR/report)."""
    run = load_run(run_dir)
    out = Path(out) if out else run["dir"] / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    env = run["environment"]
    git = env.get("git_sha", "unknown") + (" (uncommitted changes)" if env.get("git_dirty") else "")
    parts = [f"# Run {run['name']}", key_value_table({"folder": str(run["dir"]), "git commit": git})]
    parts += ["## Key figures", key_value_table({k: v for k, v in key_figures(run).items() if v is not None})]
    if run["config"]:
        parts += ["## Config", key_value_table(run["config"])]
    if env:
        shown = ("started_at", "resumed_at", "device", "torch_version", "python_version", "hostname")
        parts += ["## Environment", key_value_table({k: env[k] for k in shown if k in env})]
    if run["summary"]:
        parts += ["## Summary", key_value_table(run["summary"])]
    if run["checkpoints"]:
        rows = [{**c, "best": "yes" if c["step"] == run["best_step"] else ""} for c in run["checkpoints"]]
        parts += ["## Checkpoints", markdown_table(rows)]
    if run["eval"]:
        parts += ["## Evaluation (report.json)", key_value_table(_flatten(run["eval"]))]
    if run["sweep"]:
        parts += ["## Sweep result (result.json)", key_value_table(_flatten(run["sweep"]))]
    if plot_curves(run["metrics"], out / CURVES_FILE):
        parts += ["## Curves", f"![curves]({CURVES_FILE})"]
    path = out / "report.md"
    write_text_atomically(path, "\n\n".join(parts) + "\n")
    return path


def compare_runs(run_dirs: list[str | Path]) -> str:
    """A Markdown table: one row per figure, one column per run, each later run's delta to the first."""
    if len(run_dirs) < 2:
        raise RunReportError("compare needs at least two run folders")
    runs = [load_run(d) for d in run_dirs]
    figures = [key_figures(r) for r in runs]
    names = [r["name"] for r in runs]
    header = ["figure", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, key, lower_better in COMPARED:
        values = [f.get(key) for f in figures]
        if all(v is None for v in values):
            continue
        cells = [_number(values[0])]
        for value in values[1:]:
            cells.append(_number(value) + _delta(values[0], value, lower_better))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    note = f"Deltas are against the first run ({names[0]}); ✓ marks the better side where one is."
    return "\n".join(lines) + "\n\n" + note + "\n"


def _delta(base: Any, value: Any, lower_better: bool | None) -> str:
    if not _is_number(base) or not _is_number(value):
        return ""
    diff = value - base
    percent = f", {diff / base:+.1%}" if base else ""
    better = ""
    if lower_better is not None and diff:
        better = " ✓" if (diff < 0) == lower_better else ""
    return f" ({diff:+.4g}{percent}){better}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def plot_curves(metrics: list[dict], path: Path) -> bool:
    """One panel per curve the metrics have (train loss, val bpb, tokens/s) by step; False if none."""
    panels = [(name, [(m["step"], m[name]) for m in metrics if m.get(name) is not None]) for name in CURVES]
    panels = [(name, points) for name, points in panels if points]
    if not panels:
        return False
    plot_panels(panels, path, panel_height=2.6)
    return True


def cmd_report(args) -> int:
    runs = list(args.runs)
    if runs[0] == "compare":
        table = compare_runs(runs[1:])
        if args.out:
            write_text_atomically(Path(args.out), table)
        print(table, end="")
        return 0
    if len(runs) != 1:
        raise RunReportError("give one RUN_DIR (or `compare RUN RUN…` for a side-by-side table)")
    print(render_run(runs[0], args.out))
    return 0


def register(sub) -> None:
    report = sub.add_parser(
        "report",
        help="render a training run folder to Markdown + PNG; `report compare RUN…` lines runs up",
        description="nanochat report RUN_DIR [--out DIR]: report.md and curves.png from a run folder. "
        "nanochat report compare RUN RUN… [--out FILE]: a side-by-side table with deltas to the first run.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder, or `compare` and folders")
    report.add_argument("--out", help="folder for the report (default RUN_DIR/report); compare: a .md file")
    report.set_defaults(handler=cmd_report)
