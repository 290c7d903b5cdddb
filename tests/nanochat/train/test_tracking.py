"""Run tracking: the run folder (config, metrics, report, loss plot), resume, crashes, wandb, progress."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from nanochat.train.tracking import (
    CONFIG_FILE,
    LOSS_PLOT_FILE,
    METRICS_FILE,
    REPORT_FILE,
    RunTracker,
    progress,
    read_metrics,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_ambient_wandb(monkeypatch):
    """A developer's WANDB_PROJECT must not turn these tests into real wandb runs."""
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def strict_json(line: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant} in {line!r}")

    return json.loads(line, parse_constant=refuse)


def git_head() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def log_curve(run: RunTracker, steps: range) -> None:
    for step in steps:
        run.log(step, train_loss=5.0 / (1 + step), lr=0.02)
        if step % 10 == 0:
            run.log(step, val_bpb=2.0 - step / 100)


def test_run_folder_holds_config_metrics_report_and_plot(tmp_path):
    run_dir = tmp_path / "d4"
    config = {"depth": 4, "matrix_lr": 0.02, "data": {"shards": 2}, "note": "a|b"}
    with RunTracker(run_dir, config, title="d4 smoke", device="cpu") as run:
        log_curve(run, range(30))
        run.summary(val_bpb=1.75, tokens_per_sec=1234.5, checkpoint="model_000030.pt")
        run.add_table("CORE", [{"task": "arc_easy", "acc": 0.5}, {"task": "hellaswag", "acc": 0.25, "n": 7}])

    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    assert saved["title"] == "d4 smoke"
    assert saved["config"] == config
    assert saved["run"]["torch_version"] == torch.__version__
    assert saved["run"]["device"] == "cpu"
    assert datetime.fromisoformat(saved["run"]["started_at"]).tzinfo is not None
    assert saved["run"].get("git_sha") == git_head()
    assert "resumed_at" not in saved["run"]

    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 33
    assert strict_json(lines[0]) == {"step": 0, "train_loss": 5.0, "lr": 0.02}
    assert strict_json(lines[1]) == {"step": 0, "val_bpb": 2.0}
    assert read_metrics(run_dir) == [strict_json(line) for line in lines]

    png = (run_dir / LOSS_PLOT_FILE).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    height, width, _ = imread(run_dir / LOSS_PLOT_FILE).shape
    assert width == 700 and height > 600  # two panels: train_loss and val_bpb

    report = (run_dir / REPORT_FILE).read_text()
    assert report.startswith("# d4 smoke\n")
    assert "| status | ok |" in report
    assert "| depth | 4 |" in report
    assert '| data | {"shards": 2} |' in report
    assert "| note | a\\|b |" in report  # a pipe would break the table
    assert "## Summary" in report and "| val_bpb | 1.75 |" in report
    assert "| checkpoint | model_000030.pt |" in report
    assert (
        "## CORE\n\n| task | acc | n |\n|---|---|---|\n| arc_easy | 0.5 |  |\n| hellaswag | 0.25 | 7 |"
        in report
    )
    assert f"![loss curve]({LOSS_PLOT_FILE})" in report
    assert "| last step | 29 |" in report


def test_metrics_reach_the_disk_line_by_line(tmp_path):
    with RunTracker(tmp_path) as run:
        run.log(0, train_loss=3.5)
        on_disk = (tmp_path / METRICS_FILE).read_text()  # what a crash right now would leave
        assert on_disk == '{"step": 0, "train_loss": 3.5}\n'
        run.log(1, train_loss=3.0)
        assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 2


def test_non_finite_values_are_written_as_null(tmp_path):
    with RunTracker(tmp_path) as run:
        run.log(0, train_loss=1.0)
        run.log(1, train_loss=math.nan, grad_norm=math.inf, other=-math.inf, tokens=4096, flag=True)
        run.log(2, train_loss=0.5)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert strict_json(lines[1]) == {
        "step": 1,
        "train_loss": None,
        "grad_norm": None,
        "other": None,
        "tokens": 4096,
        "flag": 1,
    }
    assert (tmp_path / LOSS_PLOT_FILE).read_bytes().startswith(PNG_SIGNATURE)  # the null is skipped


def test_log_accepts_numbers_only(tmp_path):
    run = RunTracker(tmp_path)
    with pytest.raises(RuntimeError, match="not started"):
        run.log(0, train_loss=1.0)
    with run:
        with pytest.raises(TypeError, match=r"\.item\(\)"):
            run.log(0, train_loss=torch.tensor(1.0))
        with pytest.raises(TypeError, match="train_loss"):
            run.log(0, train_loss="1.0")
        for bad_step in (1.5, True, "3"):
            with pytest.raises(TypeError, match="step"):
                run.log(bad_step, train_loss=1.0)
        with pytest.raises(ValueError, match="non-negative"):
            run.log(-1, train_loss=1.0)
    assert read_metrics(tmp_path) == []
    with pytest.raises(RuntimeError, match="finished"):
        run.log(1, train_loss=1.0)


def test_disabled_tracker_writes_nothing_but_checks_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "would-be-used")
    with RunTracker(tmp_path / "rank1", {"depth": 2}, enabled=False) as run:
        run.log(0, train_loss=1.0)
        run.summary(val_bpb=1.0)
        run.add_table("CORE", [{"task": "x"}])
        with pytest.raises(TypeError, match="train_loss"):
            run.log(1, train_loss="high")
    assert not (tmp_path / "rank1").exists()
    assert run.status == "ok"
    with pytest.raises(RuntimeError, match="finished"):
        run.log(2, train_loss=1.0)


def test_finish_rules(tmp_path):
    run = RunTracker(tmp_path).start()
    with pytest.raises(ValueError, match="status"):
        run.finish("done")
    report = run.finish()
    assert report == tmp_path / REPORT_FILE
    assert "No `train_loss` was logged." in report.read_text()
    assert not (tmp_path / LOSS_PLOT_FILE).exists()
    report.write_text("kept")
    run.finish("failed")  # already finished: nothing changes
    assert report.read_text() == "kept"
    with pytest.raises(RuntimeError, match="finished"):
        run.start()


def test_resume_appends_with_a_marker(tmp_path):
    with RunTracker(tmp_path, {"num_iterations": 10}) as run:
        log_curve(run, range(5))
    first = json.loads((tmp_path / CONFIG_FILE).read_text())["run"]

    for _ in range(2):
        with RunTracker(tmp_path, {"num_iterations": 20}) as run:
            log_curve(run, range(5, 10))
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert saved["config"] == {"num_iterations": 20}
    assert saved["run"]["started_at"] == first["started_at"]
    assert len(saved["run"]["resumed_at"]) == 2

    rows = read_metrics(tmp_path, include_markers=True)
    markers = [i for i, row in enumerate(rows) if "resumed_at" in row]
    assert markers == [6, 12]  # after steps 0-4 (+ the val line of step 0), then after steps 5-9
    assert all(set(rows[i]) == {"resumed_at"} for i in markers)
    assert [row["step"] for row in read_metrics(tmp_path) if "train_loss" in row] == [
        *range(10),
        *range(5, 10),
    ]
    assert "| resumed | 2 |" in (tmp_path / REPORT_FILE).read_text()


def test_resume_after_a_line_cut_short(tmp_path, caplog):
    with RunTracker(tmp_path) as run:
        run.log(0, train_loss=2.0)
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write('{"step": 1, "train_lo')  # the process died mid-write
    with RunTracker(tmp_path) as run:
        run.log(1, train_loss=1.5)
    with caplog.at_level(logging.WARNING, logger="nanochat.train.tracking"):
        rows = read_metrics(tmp_path)
    assert rows == [{"step": 0, "train_loss": 2.0}, {"step": 1, "train_loss": 1.5}]
    assert "metrics.jsonl:2 is not valid JSON" in caplog.text


def test_crash_inside_the_run_still_writes_a_failed_report(tmp_path):
    with pytest.raises(RuntimeError, match="out of memory"), RunTracker(tmp_path, {"depth": 2}) as run:
        log_curve(run, range(3))
        run.summary(last_good_step=2)
        raise RuntimeError("out of memory")
    report = (tmp_path / REPORT_FILE).read_text()
    assert "| status | failed |" in report
    assert "## Error\n\n```\nRuntimeError: out of memory\n```" in report
    assert "| last_good_step | 2 |" in report
    assert (tmp_path / LOSS_PLOT_FILE).read_bytes().startswith(PNG_SIGNATURE)
    assert len(read_metrics(tmp_path)) == 4


def test_keyboard_interrupt_is_a_failed_run_too(tmp_path):
    with pytest.raises(KeyboardInterrupt), RunTracker(tmp_path):
        raise KeyboardInterrupt
    assert "| status | failed |" in (tmp_path / REPORT_FILE).read_text()


def test_missing_wandb_is_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with caplog.at_level(logging.WARNING, logger="nanochat.train.tracking"):
        with RunTracker(tmp_path / "a", wandb_project="nanochat-tests") as run:
            run.log(0, train_loss=1.0)
        monkeypatch.setenv("WANDB_PROJECT", "from-env")
        with RunTracker(tmp_path / "b") as run:
            run.log(0, train_loss=1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "'nanochat-tests' requested but wandb is not installed" in warnings[0]
    assert "'from-env' requested" in warnings[1]
    assert read_metrics(tmp_path / "a") == [{"step": 0, "train_loss": 1.0}]
    assert "wandb_run_id" not in json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["run"]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """Offline wandb writing under tmp_path; wandb reads its environment once per process, so the
    fixture tears its process-wide state down before and after."""
    wandb = pytest.importorskip(
        "wandb", reason="the optional wandb extra is not installed (pip install wandb)"
    )
    wandb_dir = tmp_path / "wandb-home"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_dir / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(wandb_dir / "cache"))
    wandb.teardown()
    yield wandb_dir
    wandb.teardown()


def wandb_flushed() -> None:
    """Wait until the offline run file is complete: `run.finish()` returns once the run is marked done, and
    wandb's service process closes (flushes) the file later; `teardown` waits for that process to exit."""
    import wandb

    wandb.teardown()


def test_wandb_offline_run_mirrors_the_log(tmp_path, offline_wandb):
    run_dir = tmp_path / "run"
    with RunTracker(run_dir, {"depth": 4}, wandb_project="nanochat-tests") as run:
        run.log(0, train_loss=1.2345)
        run.log(1, train_loss=0.6789, val_bpb=1.111)
        run.summary(final_bpb=1.111)
    wandb_flushed()
    run_id = json.loads((run_dir / CONFIG_FILE).read_text())["run"]["wandb_run_id"]
    (offline_run,) = (offline_wandb / "wandb").glob(f"offline-run-*-{run_id}")
    data = (offline_run / f"run-{run_id}.wandb").read_bytes()
    for text in (b"train_loss", b"1.2345", b"0.6789", b"val_bpb", b"final_bpb", b"nanochat-tests"):
        assert text in data, text
    assert f"| wandb run | {run_id} |" in (run_dir / REPORT_FILE).read_text()
    assert read_metrics(run_dir)[1] == {"step": 1, "train_loss": 0.6789, "val_bpb": 1.111}

    with RunTracker(run_dir, {"depth": 4}, wandb_project="nanochat-tests") as run:  # resume: same wandb run
        run.log(2, train_loss=0.5)
    assert json.loads((run_dir / CONFIG_FILE).read_text())["run"]["wandb_run_id"] == run_id


def test_wandb_that_fails_to_start_is_a_warning(tmp_path, offline_wandb, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "no-such-mode")  # wandb.init raises, as it does for a missing API key
    with (
        caplog.at_level(logging.WARNING, logger="nanochat.train.tracking"),
        RunTracker(tmp_path / "run", wandb_project="nanochat-tests") as run,
    ):
        run.log(0, train_loss=1.0)
    assert "could not start a wandb run" in caplog.text
    assert read_metrics(tmp_path / "run") == [{"step": 0, "train_loss": 1.0}]


def test_progress_is_quiet_without_a_terminal_unless_forced(capsys):
    assert list(progress(range(5), desc="tokenize")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""  # pytest's stderr is not a TTY
    assert list(progress(iter(range(5)), total=5, desc="tokenize", force=True)) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "tokenize" in err and "5/5" in err
    assert list(progress(range(3), desc="off", enabled=False, force=True)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
