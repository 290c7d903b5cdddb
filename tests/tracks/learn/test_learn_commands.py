"""`nanochat learn` end to end in a temporary workspace: start → check (fails) → hint → fix → check (passes)
→ the day's log entry has the contract's three lines; plus solution, status, the child process's timeout
and crash handling. The checks here run in a real child process (runner.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import tomllib
from pathlib import Path

import pytest

from tracks.learn.commands import register
from tracks.learn.core import DAYS, LearnError, exercise
from tracks.learn.progress import Progress
from tracks.learn.runner import run_check

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "tracks" / "learn"


def learn(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["learn", *argv])
    return args.handler(args)


def package_files() -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in PACKAGE.rglob("*.py")}


def test_the_whole_loop_in_a_workspace(tmp_path, capsys):
    workspace, before = tmp_path / "ws", package_files()
    ws = ["--workspace", str(workspace)]
    assert learn("start", "22", *ws) == 0
    out = capsys.readouterr().out
    attempt = workspace / exercise(22).filename
    assert attempt.read_text() == exercise(22).starter.read_text()
    assert "most sure of" in out and "nanochat learn check 22" in out  # the goal, then what to do

    assert learn("check", "22", *ws, "--repo", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "✗ day 22" in out and "a TODO is not written yet" in out and "hint:" in out
    assert "Traceback" not in out

    assert learn("hint", "22", *ws) == 0
    assert "hint 1/3" in capsys.readouterr().out
    assert learn("hint", "22", *ws) == 0
    assert "hint 2/3" in capsys.readouterr().out

    # a first fix that is still wrong (least confident first), then the right one
    fixed = exercise(22).solution.read_text()
    attempt.write_text(
        fixed.replace('key=lambda row: -row["confidence"]', 'key=lambda row: row["confidence"]')
    )
    assert learn("check", "22", *ws, "--repo", str(tmp_path)) == 1
    assert "least confident" in capsys.readouterr().out
    attempt.write_text(fixed)
    lines = ["--learned", "recall divides by the true count", "--shipped", "day22 error analysis",
             "--tomorrow", "nanochat learn start 24"]  # fmt: skip
    assert learn("check", "22", *ws, "--repo", str(tmp_path), "--date", "2030-05-01", *lines) == 0
    out = capsys.readouterr().out
    assert "✓ day 22" in out
    entry = (tmp_path / "daily-log" / "2030-05-01.md").read_text()
    assert "## Learning path: day 22, error analysis" in entry
    assert "- What I learned: recall divides by the true count" in entry
    assert "- What shipped: day22 error analysis" in entry
    assert "- Tomorrow: nanochat learn start 24" in entry

    progress = Progress.load(workspace).day(22)
    assert (progress.attempts, progress.passed_on, progress.hints_seen, progress.revealed_on) == (
        3,
        "2030-05-01",
        2,
        None,
    )
    assert package_files() == before, "the package itself is never written"


def test_start_keeps_an_attempt_and_an_unknown_day_is_a_clear_error(tmp_path, capsys):
    ws = ["--workspace", str(tmp_path)]
    learn("start", "16", *ws)
    path = tmp_path / exercise(16).filename
    path.write_text("# my attempt\n")
    learn("start", "16", *ws)
    assert path.read_text() == "# my attempt\n" and "exists already" in capsys.readouterr().out
    with pytest.raises(LearnError, match="day 3 has no exercise"):
        learn("start", "3", *ws)
    with pytest.raises(LearnError, match="nanochat learn start 17"):
        learn("check", "17", *ws)


def test_solution_is_recorded_and_status_counts_days_and_the_streak(tmp_path, capsys):
    ws = ["--workspace", str(tmp_path)]
    assert learn("solution", "19", *ws) == 0
    out = capsys.readouterr().out
    assert (
        "recorded as revealed" in out
        and "def causal_attention" in out
        and "tracks/pytorch/attention.py" in out
    )
    progress = Progress.load(tmp_path)
    progress.day(16).passed_on, progress.day(16).attempts = "2030-05-01", 1
    progress.day(17).passed_on, progress.day(17).attempts = "2030-05-02", 2
    progress.day(18).attempts = 1
    progress.save()
    assert learn("status", *ws, "--date", "2030-05-02") == 0
    out = capsys.readouterr().out
    assert (
        "done 2/60 days" in out and "attempted 3" in out and "revealed 1" in out and "streak 2 day(s)" in out
    )
    assert "next: nanochat learn start 1" in out
    assert Progress.load(tmp_path).streak(dt.date(2030, 5, 4)) == 0  # a day missed breaks it
    assert learn("list", *ws) == 0
    listing = capsys.readouterr().out
    assert " 16  beginner" in listing and "revealed" in listing


def test_a_hanging_attempt_times_out_with_a_reviewer_message(tmp_path):
    path = tmp_path / "hang.py"
    path.write_text("while True:\n    pass\n")
    verdict = run_check(exercise(22), path, timeout=5)
    assert not verdict.passed and "did not finish within 5 s" in verdict.behaviour
    assert "loop" in verdict.hint


def test_an_attempt_that_kills_its_process_is_judged_too(tmp_path):
    path = tmp_path / "exits.py"
    path.write_text("import os\nos._exit(3)\n")
    verdict = run_check(exercise(22), path, timeout=60)
    assert not verdict.passed and "exit code 3" in verdict.behaviour and "os._exit" in verdict.hint


def test_the_command_is_registered_and_the_workspace_ignored():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert (
        pyproject["project"]["entry-points"]["nanochat.commands"]["learn"] == "tracks.learn.commands:register"
    )
    assert "/workspace/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_learning_path_lists_exactly_the_days_with_an_exercise():
    text = (REPO / "docs" / "learning-path.md").read_text()
    rows = re.findall(
        r"^\| (beginner|intermediate|production) \| (\d+) \| (.+) \|$", text, flags=re.MULTILINE
    )
    assert [(level, int(day), title) for level, day, title in rows] == [
        (exercise(day).level, day, exercise(day).title) for day in DAYS
    ]
    readme = (REPO / "README.md").read_text()
    learning = readme[readme.index("## Learn with it") :]
    assert learning.split("```bash\n", 1)[1].startswith("nanochat learn start 1 ")


def test_through_the_nanochat_command_a_user_error_is_one_line(tmp_path, monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    import nanochat.cli as cli

    installed = cli.entry_points
    learn_entry = EntryPoint("learn", "tracks.learn.commands:register", cli.COMMANDS_GROUP)

    def with_learn(group: str):  # as after `pip install -e .` with this pyproject
        return [e for e in installed(group=group) if e.name != "learn"] + [learn_entry]

    monkeypatch.setattr(cli, "entry_points", with_learn)
    assert cli.main(["learn", "list", "--workspace", str(tmp_path)]) == 0
    assert "  1  beginner" in capsys.readouterr().out
    assert cli.main(["learn", "start", "3", "--workspace", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nanochat: error: day 3 has no exercise") and len(err.splitlines()) == 1
