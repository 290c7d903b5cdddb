"""Experiment tracking for every training run: a folder that explains the run on its own.

A `RunTracker` owns one run folder:
- `config.json`  the run's config plus where it ran (git sha, torch, device, start time, resumes);
- `metrics.jsonl` one JSON line per `log(step, **metrics)`, flushed at once so a crash keeps them;
  numbers only, NaN/inf stored as null; a run resumed into the folder appends a `{"resumed_at": …}` line;
- `report.md` + `loss.png` written by `finish`: status, config, summary, result tables, loss curve;
- `summary.json` written by `finish`: the status and the `summary(...)` values, for `nanochat report`.

Optionally it mirrors `log` and `summary` to Weights & Biases (`pip install 'nanochat-service[wandb]'`;
`WANDB_MODE=offline` works without network). Tracking never stops training: a missing or failing wandb
is a logged warning. Under torchrun every rank builds a tracker with `enabled=(rank == 0)`: only rank 0
writes, the others just check their arguments.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
LOSS_PLOT_FILE = "loss.png"
STATUSES = ("ok", "failed")


class RunTracker:
    """Records one training run in `run_dir`; use as `with RunTracker(dir, config) as run: run.log(…)`.

    Leaving the `with` block by an exception finishes the run as "failed" (the report names the error)
    and lets the exception propagate. With `enabled=False` the calls check their arguments, nothing more.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        device: str | None = None,
        wandb_project: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = dict(config or {})
        self.title = title or self.run_dir.name
        self.device = device
        self.wandb_project = wandb_project or os.environ.get("WANDB_PROJECT") or None
        self.enabled = enabled
        self.run_info: dict[str, Any] = {}
        self.summary_values: dict[str, Any] = {}
        self.tables: list[tuple[str, list[dict]]] = []
        self.status: str | None = None
        self._started = False
        self._metrics_file = None
        self._wandb_run = None
        self._session_start: datetime | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> RunTracker:
        """Write config.json and open metrics.jsonl (appending, with a marker, if the run is resumed)."""
        if self.status is not None:
            raise RuntimeError(f"run {self.run_dir} is already finished")
        if self._started:
            return self
        self._started = True
        if not self.enabled:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._session_start = _now()
        stamp = _isoformat(self._session_start)
        config_path = self.run_dir / CONFIG_FILE
        metrics_path = self.run_dir / METRICS_FILE
        resumed = config_path.exists() or (metrics_path.exists() and metrics_path.stat().st_size > 0)
        previous = json.loads(config_path.read_text()).get("run", {}) if config_path.exists() else {}

        self.run_info = {"started_at": previous.get("started_at", stamp), **_environment(self.device)}
        if resumed:
            self.run_info["resumed_at"] = [*previous.get("resumed_at", []), stamp]
        self._wandb_run = self._start_wandb(previous.get("wandb_run_id"))
        if self._wandb_run is not None:
            self.run_info["wandb_run_id"] = self._wandb_run.id
        record = {"title": self.title, "config": self.config, "run": self.run_info}
        _write_text_atomic(config_path, json.dumps(record, indent=2, default=str) + "\n")

        ends_mid_line = resumed and metrics_path.exists() and not _ends_with_newline(metrics_path)
        self._metrics_file = metrics_path.open("a", encoding="utf-8")
        if ends_mid_line:  # a crash cut the last line short: start ours on a fresh line
            self._metrics_file.write("\n")
        if resumed:
            self._write_line({"resumed_at": stamp})
        return self

    def log(self, step: int, **metrics: float) -> None:
        """Append one line {"step": step, **metrics}; values must be numbers (NaN and inf become null)."""
        if self.status is not None:
            raise RuntimeError(f"run {self.run_dir} is already finished")
        if not self._started:
            raise RuntimeError("the run is not started: use `with RunTracker(...)` or call start()")
        if not isinstance(step, numbers.Integral) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {step!r}")
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        values = {}
        for name, value in metrics.items():
            if not isinstance(value, numbers.Real):
                raise TypeError(
                    f"metric {name!r} must be a number, got {type(value).__name__} (use .item() on tensors)"
                )
            values[name] = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not self.enabled:
            return
        self._write_line({"step": int(step), **{k: _finite_or_none(v) for k, v in values.items()}})
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=int(step))

    def summary(self, **values: Any) -> None:
        """Record final numbers (or short strings) for the report's summary table."""
        self.summary_values.update(values)
        if self._wandb_run is not None:
            self._wandb_run.summary.update(values)

    def add_table(self, title: str, rows: list[dict]) -> None:
        """A result table for the report (e.g. one row per eval task); columns are the rows' keys."""
        self.tables.append((title, [dict(row) for row in rows]))

    def finish(self, status: str = "ok", error: str | None = None) -> Path:
        """Close the metrics, draw loss.png, write report.md (returned); later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        report_path = self.run_dir / REPORT_FILE
        if self.status is not None:
            return report_path
        self.start()
        self.status = status
        if not self.enabled:
            return report_path
        self._metrics_file.close()
        self._metrics_file = None
        metrics = read_metrics(self.run_dir)
        plotted = _plot_losses(metrics, self.run_dir / LOSS_PLOT_FILE)
        _write_text_atomic(report_path, self._render_report(metrics, plotted, error))
        summary = {"status": status, **self.summary_values}
        _write_text_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=0 if status == "ok" else 1)
            self._wandb_run = None
        return report_path

    def __enter__(self) -> RunTracker:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish("ok")
            return False
        try:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")
        except Exception:  # the training error matters more than a broken report
            logger.exception("could not write the report of failed run %s", self.run_dir)
        return False

    # --- internals ---------------------------------------------------------------------------------

    def _write_line(self, record: dict) -> None:
        self._metrics_file.write(json.dumps(record, allow_nan=False) + "\n")
        self._metrics_file.flush()

    def _start_wandb(self, previous_run_id: str | None):
        if not self.wandb_project:
            return None
        try:
            import wandb
        except ImportError:
            logger.warning(
                "wandb project %r requested but wandb is not installed "
                "(pip install 'nanochat-service[wandb]'); tracking to %s only",
                self.wandb_project,
                self.run_dir,
            )
            return None
        try:
            return wandb.init(
                project=self.wandb_project,
                name=self.title,
                config=self.config,
                dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
                id=previous_run_id,
                resume="allow" if previous_run_id else None,
            )
        except Exception as e:  # tracking must never stop a training run
            logger.warning("could not start a wandb run (%s); tracking to %s only", e, self.run_dir)
            return None

    def _render_report(self, metrics: list[dict], plotted: bool, error: str | None) -> str:
        info = self.run_info
        finished = _now()
        git = info.get("git_sha") or "not a git checkout"
        if info.get("git_dirty"):
            git += " (uncommitted changes)"
        steps = [row["step"] for row in metrics]
        overview = {
            "status": self.status,
            "started": info["started_at"],
            "finished": _isoformat(finished),
            "duration (this session)": _duration(finished - self._session_start),
            "resumed": len(info.get("resumed_at", [])),
            "git": git,
            "torch": info["torch_version"],
            "device": info["device"],
            "metric lines": len(metrics),
            "last step": steps[-1] if steps else "",
        }
        if "wandb_run_id" in info:
            overview["wandb run"] = info["wandb_run_id"]
        parts = [f"# {self.title}", key_value_table(overview)]
        if error:
            parts += ["## Error", f"```\n{error}\n```"]
        parts += ["## Config", key_value_table(self.config) if self.config else "(empty)"]
        if self.summary_values:
            parts += ["## Summary", key_value_table(self.summary_values)]
        for title, rows in self.tables:
            parts += [f"## {title}", markdown_table(rows) if rows else "(no rows)"]
        parts.append("## Loss")
        parts.append(f"![loss curve]({LOSS_PLOT_FILE})" if plotted else "No `train_loss` was logged.")
        return "\n\n".join(parts) + "\n"


def read_metrics(run_dir: str | os.PathLike, *, include_markers: bool = False) -> list[dict]:
    """The metric lines of a run's metrics.jsonl, in order (plus the resume markers if asked).

    Lines that do not parse (a crash mid-write) are skipped with a warning.
    """
    path = Path(run_dir) / METRICS_FILE
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON, skipped", path, number)
                continue
            if include_markers or "step" in row:
                rows.append(row)
    return rows


def progress(
    iterable: Iterable,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    force: bool = False,
) -> tqdm:
    """A tqdm progress bar over `iterable`, shown only when stderr is a terminal unless `force`."""
    disable = True if not enabled else (False if force else None)  # None: tqdm's own TTY check
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True)


# --- helpers -------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _isoformat(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _duration(delta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _finite_or_none(value: float | int) -> float | int | None:
    return value if math.isfinite(value) else None


def _environment(device: str | None) -> dict[str, Any]:
    sha, dirty = _git_state(Path(__file__).resolve().parent)
    info: dict[str, Any] = {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device or _describe_device(),
        "hostname": socket.gethostname(),
    }
    if sha:
        info["git_sha"] = sha
        info["git_dirty"] = dirty
    return info


def _describe_device() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return "cpu"


def _git_state(directory: Path) -> tuple[str | None, bool]:
    """(HEAD sha, has uncommitted changes to tracked files) of the checkout holding `directory`."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return None, False
    return sha, bool(git("status", "--porcelain", "--untracked-files=no"))


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _write_text_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of `rows`, one column per key any row has (first seen first)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def key_value_table(values: Mapping[str, Any]) -> str:
    return markdown_table([{"key": key, "value": value} for key, value in values.items()])


def _plot_losses(metrics: list[dict], path: Path) -> bool:
    """loss.png: train_loss by step, and val_bpb in a second panel when logged. False if nothing to plot."""
    series = {
        name: [(row["step"], row[name]) for row in metrics if row.get(name) is not None]
        for name in ("train_loss", "val_bpb")
    }
    if not series["train_loss"]:
        return False
    plot_panels([(name, points) for name, points in series.items() if points], path, panel_height=3.2)
    return True


def plot_panels(panels: list[tuple[str, list[tuple[int, float]]]], path: Path, panel_height: float) -> None:
    """One panel per (name, [(step, value), ...]), stacked over a shared step axis, saved as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, panel_height * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, points) in zip(axes, panels, strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, linewidth=1)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    figure.savefig(path, dpi=100)
