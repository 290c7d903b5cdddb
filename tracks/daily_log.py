"""`nanochat log draft`: draft today's learning-log entry from the latest run reports and git history.

The entry follows `daily-log/TEMPLATE.md`: what was built (the commits since the last entry's day),
one metric (headline figures of the most recently written report.json files under models/ and runs/),
one failure and its fix plan, and the next step. The last two are questions for you to answer: a draft
never invents them. The file is written to `daily-log/YYYY-MM-DD.md` unless it exists already.

It deliberately reads only local files and `git log`; it never commits. The same `log` group has `post` and
`week` (tracks/build_in_public.py): drafts for building in public, from the written entries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

REPORT_GLOBS = (
    "models/*/report.json",
    "models/*/*/report.json",
    "runs/**/report.json",
    "runs/**/metrics.json",
)
HEADLINE_KEYS = ("accuracy", "macro_f1", "bpb", "val_bpb", "eval_loss_after", "val_loss", "loss", "f1")
MAX_REPORTS = 3
TODO = "_(to write: {})_"


class LogError(ValueError):
    """A log draft that cannot be made; the message says why."""


def latest_reports(repo: Path, limit: int = MAX_REPORTS) -> list[Path]:
    """The most recently modified report files, newest first."""
    found = {p for pattern in REPORT_GLOBS for p in repo.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]


def headline(report: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, float]]:
    """(dotted key, value) for the figures worth a log line: accuracy, F1, bits per byte, losses."""
    found: list[tuple[str, float]] = []
    if depth > 3 or not isinstance(report, dict):
        return found
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in HEADLINE_KEYS:
            found.append((name, float(value)))
        elif isinstance(value, dict):
            found += headline(value, name + ".", depth + 1)
    return found


def git_commits(repo: Path, since: str) -> list[str]:
    """`git log --since` one line per commit ("abc1234 subject"), oldest first."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "log", f"--since={since}", "--reverse", "--pretty=format:%h %s"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        raise LogError("git is not installed; it is needed to list the day's commits") from None
    if result.returncode != 0 and "does not have any commits" in result.stderr:
        return []
    if result.returncode != 0:
        raise LogError(f"{repo} is not a git repository ({result.stderr.strip().splitlines()[-1:]})")
    return [line for line in result.stdout.splitlines() if line.strip()]


def draft_entry(repo: str | Path, day: dt.date, since: str = "24 hours ago") -> str:
    root = Path(repo)
    commits = git_commits(root, since)
    lines = [f"# {day.isoformat()}", "", "## What I built", ""]
    lines += [f"- {c}" for c in commits] or [
        f"- {TODO.format('no commits since ' + since + '; what did you do?')}"
    ]
    lines += ["", "## One metric", ""]
    reports = latest_reports(root)
    for path in reports:
        try:
            figures = headline(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
        shown = ", ".join(f"{k} {v:.4g}" for k, v in figures[:4]) or "no headline figure"
        lines.append(f"- `{path.relative_to(root)}`: {shown}")
    if not reports:
        lines.append(
            f"- {TODO.format('no report.json under models/ or runs/; which number did you measure?')}"
        )
    lines += [
        "",
        "Which one matters today, and what did you expect it to be?",
        "",
        "## One failure and the fix plan",
        "",
        TODO.format("what broke or surprised you, the evidence, and what you will try"),
        "",
        "## Next step",
        "",
        TODO.format("one concrete command or file for tomorrow"),
        "",
    ]
    return "\n".join(lines)


def register(subparsers: Any) -> argparse.ArgumentParser:
    log = subparsers.add_parser("log", help="the learning log (daily-log/)")
    commands = log.add_subparsers(dest="log_command", required=True, parser_class=type(log))
    draft = commands.add_parser("draft", help="draft today's entry from run reports and git history")
    draft.add_argument("--repo", default=".", help="repository root (default .)")
    draft.add_argument("--date", type=dt.date.fromisoformat, default=None, help="YYYY-MM-DD (default today)")
    draft.add_argument(
        "--since", default="24 hours ago", help="git --since for the commits (default 24 hours ago)"
    )
    draft.add_argument("--out", help="file to write, - for stdout (default daily-log/DATE.md in --repo)")
    draft.set_defaults(handler=cmd_draft)
    from tracks import build_in_public  # `log post`, `log week`: drafts for building in public

    build_in_public.register(commands)
    return log


def cmd_draft(args: argparse.Namespace) -> int:
    day = args.date or dt.date.today()
    text = draft_entry(args.repo, day, args.since)
    if args.out == "-":
        print(text, end="")
        return 0
    out = Path(args.out) if args.out else Path(args.repo) / "daily-log" / f"{day.isoformat()}.md"
    if out.exists():
        raise LogError(f"{out} exists already; edit it, or write the draft elsewhere with --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"log draft -> {out}")
    return 0
