"""`nanochat report RUN_DIR` and `nanochat report compare RUN…` through the real CLI, on two tiny runs trained
here (different learning rates) and on the bundled demo model's folder (checkpoint + eval report only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nanochat.cli import main
from nanochat.train.base import BaseConfig, train_base
from nanochat.train.distributed import DistContext

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PNG = b"\x89PNG\r\n\x1a\n"
DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """Two 6-step runs that differ only in the matrix learning rate."""
    shards, tokenizer = tiny_corpus
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for name, lr in (("slow", 0.002), ("fast", 0.05)):
        config = BaseConfig(
            data=str(shards),
            tokenizer=str(tokenizer),
            out=str(root / name),
            depth=1,
            max_seq_len=32,
            device_batch_size=4,
            num_iterations=6,
            eval_every=3,
            eval_batches=2,
            save_every=3,
            matrix_lr=lr,
            device="cpu",
            progress=False,
        )
        train_base(config, CPU)
        folders[name] = root / name
    return folders


def report(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_report_has_config_curves_checkpoints_environment_and_commit(runs, capsys):
    code, out, _ = report(capsys, str(runs["fast"]))
    assert code == 0
    path = Path(out.strip())
    assert path == runs["fast"] / "report" / "report.md"
    text = path.read_text()
    for section in (
        "## Key figures",
        "## Config",
        "## Environment",
        "## Summary",
        "## Checkpoints",
        "## Curves",
    ):
        assert section in text, section
    assert "| matrix_lr | 0.05 |" in text
    summary = json.loads((runs["fast"] / "summary.json").read_text())
    assert f"| val_bpb | {summary['val_bpb']:.6g} |" in text
    assert "| git commit |" in text and "| torch_version |" in text
    assert text.count("| yes |") == 1  # exactly one best checkpoint marked
    assert (path.parent / "curves.png").read_bytes().startswith(PNG)


def test_report_into_another_folder(runs, capsys, tmp_path):
    code, out, _ = report(capsys, str(runs["slow"]), "--out", str(tmp_path / "r"))
    assert code == 0 and Path(out.strip()) == tmp_path / "r" / "report.md"
    assert (tmp_path / "r" / "curves.png").is_file()


def test_compare_lines_runs_up_with_deltas_to_the_first(runs, capsys, tmp_path):
    table_file = tmp_path / "compare.md"
    code, out, _ = report(capsys, "compare", str(runs["slow"]), str(runs["fast"]), "--out", str(table_file))
    assert code == 0 and table_file.read_text() == out
    lines = {
        line.split(" | ")[0].removeprefix("| "): line for line in out.splitlines() if line.startswith("| ")
    }
    assert lines["figure"] == "| figure | slow | fast |"
    slow, fast = (json.loads((runs[n] / "summary.json").read_text())["val_bpb"] for n in ("slow", "fast"))
    row = lines["final val bpb"]
    assert f"| {slow:.4g} | {fast:.4g} ({fast - slow:+.4g}, {(fast - slow) / slow:+.1%})" in row
    assert row.endswith(" ✓ |") == (fast < slow)  # marked when the second run is better
    assert "(+0, +0.0%)" in lines["parameters"]  # same model size


def test_demo_model_folder_reports_its_checkpoint_and_eval(capsys, tmp_path):
    code, _, _ = report(capsys, str(DEMO), "--out", str(tmp_path))
    assert code == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Checkpoints" in text and "## Evaluation (report.json)" in text
    assert "| 819 |" in text  # models/demo holds step 819


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("{empty}",), "holds no run files"),
        (("{missing}",), "run folder not found"),
        (("compare", "{empty}"), "compare needs at least two run folders"),
        (("{empty}", "{empty}"), "give one RUN_DIR"),
    ],
)
def test_bad_folders_are_one_line_errors(capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in argv]
    code, _, err = report(capsys, *argv)
    assert code == 1
    assert err.startswith("nanochat: error: ") and message in err and len(err.strip().splitlines()) == 1
