"""`nanochat learn`: list, start, check, hint, solution and status over the learner's workspace.

`check` runs in a child process (runner.py). A pass ends with the learning contract's three lines (what
you learned, what shipped, tomorrow), asked for on a terminal or given as flags, written into that day's
log entry (`daily-log/YYYY-MM-DD.md` under --repo; drafted by tracks/daily_log.py when missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from tracks.learn.core import DAYS, Exercise, LearnError, exercise
from tracks.learn.progress import Progress
from tracks.learn.runner import DEFAULT_TIMEOUT, run_check

TOTAL_DAYS = 60
CONTRACT = (("learned", "What I learned"), ("shipped", "What shipped"), ("tomorrow", "Tomorrow"))


def _day(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"DAY must be a number, got {text!r}") from None


def register(subparsers: Any) -> argparse.ArgumentParser:
    learn = subparsers.add_parser("learn", help="coaching mode: exercises with checks, hints and solutions")
    commands = learn.add_subparsers(dest="learn_command", required=True, parser_class=type(learn))

    def add(name: str, help: str, handler, day: bool = True) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help)
        if day:
            p.add_argument("day", type=_day, help="the day of docs/learning-path.md")
        p.add_argument("--workspace", default="workspace", help="your exercise folder (default workspace/)")
        p.set_defaults(handler=handler)
        return p

    add("list", "the exercises, their level and your progress", cmd_list, day=False)
    start = add("start", "write the day's starter into the workspace and show the goal", cmd_start)
    start.add_argument("--force", action="store_true", help="overwrite your file with the starter again")
    check = add("check", "review your attempt", cmd_check)
    check.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default 120)")
    check.add_argument("--repo", default=".", help="where daily-log/ is (default .)")
    check.add_argument("--date", type=dt.date.fromisoformat, default=None, help="YYYY-MM-DD (default today)")
    for name, question in CONTRACT:
        check.add_argument(f"--{name}", help=f"{question}: the line for the log (asked when omitted)")
    hint = add("hint", "the next hint (or --level 1-3)", cmd_hint)
    hint.add_argument("--level", type=int, choices=(1, 2, 3), help="which hint (default: the next one)")
    add("solution", "show the reference solution (recorded as revealed)", cmd_solution)
    status = add("status", "done / attempted / revealed over the 60 days, and the streak", cmd_status, False)
    status.add_argument("--date", type=dt.date.fromisoformat, default=None, help="today (default: today)")
    return learn


def _attempt(ex: Exercise, workspace: Path) -> Path:
    path = workspace / ex.filename
    if not path.exists():
        raise LearnError(f"{path} does not exist; run `nanochat learn start {ex.day}` first")
    return path


def cmd_list(args: argparse.Namespace) -> int:
    progress = Progress.load(Path(args.workspace))
    for day in DAYS:
        ex = exercise(day)
        print(f"{day:>3}  {ex.level:<12} {ex.title:<46} {progress.state(day)}".rstrip())
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    ex, workspace = exercise(args.day), Path(args.workspace)
    path = workspace / ex.filename
    if path.exists() and not args.force:
        print(f"{path} exists already (your attempt); `check {ex.day}` reviews it, --force starts over")
    else:
        workspace.mkdir(parents=True, exist_ok=True)
        path.write_text(ex.starter.read_text())
        print(f"wrote {path}")
    progress = Progress.load(workspace)
    progress.day(ex.day).started = progress.day(ex.day).started or dt.date.today().isoformat()
    progress.save()
    print(f"\n[{ex.level}] {ex.goal}\n")
    print(f"Edit the TODOs, then: nanochat learn check {ex.day}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    ex, workspace = exercise(args.day), Path(args.workspace)
    verdict = run_check(ex, _attempt(ex, workspace).resolve(), args.timeout)
    progress = Progress.load(workspace)
    day = progress.day(ex.day)
    day.attempts += 1
    print(verdict.message(ex))
    if not verdict.passed:
        progress.save()
        print(
            f"\nMore help: `nanochat learn hint {ex.day}`; the reference: `nanochat learn solution {ex.day}`"
        )
        return 1
    today = args.date or dt.date.today()
    day.passed_on = day.passed_on or today.isoformat()
    progress.save()
    lines = {name: getattr(args, name) for name, _ in CONTRACT}
    if any(v is None for v in lines.values()) and sys.stdin.isatty():
        for name, question in CONTRACT:
            lines[name] = lines[name] or input(f"{question}: ").strip()
    if not all(lines.values()):
        print("\nThe log entry needs three lines: pass --learned, --shipped and --tomorrow to record them.")
        return 0
    entry = write_contract(Path(args.repo), today, ex, lines)
    print(f"\nlogged in {entry}")
    return 0


def write_contract(repo: Path, day: dt.date, ex: Exercise, lines: dict[str, str]) -> Path:
    """Append the day's three contract lines to `daily-log/DATE.md`, drafting the entry if it is missing."""
    from tracks.daily_log import LogError, draft_entry

    path = repo / "daily-log" / f"{day.isoformat()}.md"
    if not path.exists():
        try:
            text = draft_entry(repo, day)
        except LogError:  # not a git repository: an entry without the commit list
            text = f"# {day.isoformat()}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    block = [f"\n## Learning path: day {ex.day}, {ex.title}\n"]
    block += [f"- {question}: {lines[name]}" for name, question in CONTRACT]
    with path.open("a") as out:
        out.write("\n".join(block) + "\n")
    return path


def cmd_hint(args: argparse.Namespace) -> int:
    ex, workspace = exercise(args.day), Path(args.workspace)
    progress = Progress.load(workspace)
    day = progress.day(ex.day)
    level = args.level or min(day.hints_seen + 1, 3)
    day.hints_seen = max(day.hints_seen, level)
    progress.save()
    print(f"hint {level}/3 for day {ex.day}: {ex.hints[level - 1]}")
    return 0


def cmd_solution(args: argparse.Namespace) -> int:
    ex, workspace = exercise(args.day), Path(args.workspace)
    progress = Progress.load(workspace)
    day = progress.day(ex.day)
    day.revealed_on = day.revealed_on or dt.date.today().isoformat()
    progress.save()
    print(f"# reference solution for day {ex.day}, {ex.title} (recorded as revealed)\n")
    print(ex.solution.read_text())
    print("# the project's own tested code for the same thing:")
    for ref in ex.reference:
        print(f"#   {ref}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    progress = Progress.load(Path(args.workspace))
    today = args.date or dt.date.today()
    states = {day: progress.state(day) for day in range(1, TOTAL_DAYS + 1)}
    done = sum(s.startswith("done") for s in states.values())
    attempted = sum(1 for p in progress.days.values() if p.attempts)
    revealed = sum(1 for p in progress.days.values() if p.revealed_on)
    print(
        f"done {done}/{TOTAL_DAYS} days ({len(DAYS)} have exercises), attempted {attempted}, "
        f"revealed {revealed}, streak {progress.streak(today)} day(s)"
    )
    for day, state in states.items():
        if state:
            print(f"{day:>3}  {exercise(day).title if day in DAYS else '':<46} {state}")
    nxt = next((d for d in DAYS if not states[d].startswith("done")), None)
    if nxt is not None:
        print(f"next: nanochat learn start {nxt}")
    return 0
