"""`nanochat log draft` on a temporary git repository with a run report."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess

import pytest

from nanochat.cli import main
from tracks.daily_log import draft_entry, headline, latest_reports

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed (apt-get install -y git)"
)


def git(repo, *args, date: str | None = None):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    if date:
        env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "Old work from last month", date="2020-01-01T12:00:00")
    report = tmp_path / "models" / "fortunes" / "v1" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"test": {"accuracy": 0.612, "macro_f1": 0.597, "examples": 1013}}))
    (tmp_path / "b.txt").write_text("b")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "Train the fortunes classifier")
    return tmp_path


def test_draft_lists_todays_commits_and_the_latest_metric(repo):
    text = draft_entry(repo, dt.date(2030, 5, 1))
    assert text.startswith("# 2030-05-01\n\n## What I built\n")
    assert "Train the fortunes classifier" in text
    assert "Old work from last month" not in text  # older than --since
    assert "`models/fortunes/v1/report.json`: test.accuracy 0.612, test.macro_f1 0.597" in text
    for heading in ("## One metric", "## One failure and the fix plan", "## Next step"):
        assert heading in text
    assert "_(to write: what broke or surprised you" in text  # never invented


def test_cli_writes_the_file_once(repo, capsys):
    assert main(["log", "draft", "--repo", str(repo), "--date", "2030-05-01"]) == 0
    written = repo / "daily-log" / "2030-05-01.md"
    assert written.read_text().startswith("# 2030-05-01")
    assert main(["log", "draft", "--repo", str(repo), "--date", "2030-05-01"]) == 1
    assert "exists already" in capsys.readouterr().err


def test_no_commits_and_no_reports_leave_questions(tmp_path):
    git(tmp_path, "init", "-q")
    text = draft_entry(tmp_path, dt.date(2030, 5, 1))
    assert "no commits since 24 hours ago" in text and "no report.json" in text


def test_outside_a_git_repository_is_a_clear_error(tmp_path, capsys):
    assert main(["log", "draft", "--repo", str(tmp_path), "--out", "-"]) == 1
    assert "is not a git repository" in capsys.readouterr().err


def test_newest_reports_first_and_headline_figures_only(tmp_path):
    for i, name in enumerate(("a", "b")):
        path = tmp_path / "models" / name / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        os.utime(path, (1000 + i, 1000 + i))
    assert [p.parent.name for p in latest_reports(tmp_path)] == ["b", "a"]
    figures = headline(
        {"test": {"accuracy": 0.5, "labels": ["x"], "examples": 3}, "val_loss": 2.0, "flag": True}
    )
    assert figures == [("test.accuracy", 0.5), ("val_loss", 2.0)]
