"""Run one check in a child process with a timeout: a hanging, crashing or exiting attempt is judged too.

The child (`python -m tracks.learn.runner DAY FILE`) prints its Verdict as one JSON line after a marker;
whatever the learner's code prints before it is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from tracks.learn.core import Exercise, Verdict, evaluate, exercise

MARKER = "@@learn-verdict@@ "
DEFAULT_TIMEOUT = 120.0  # seconds; the checks take a few, importing torch and transformers the rest


def run_check(ex: Exercise, path: Path, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the `tracks` package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tracks.learn.runner", str(ex.day), str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=path.parent,
        )
    except subprocess.TimeoutExpired:
        return Verdict(
            False,
            f"the check did not finish within {timeout:g} s",
            str(path.name),
            "an answer in a few seconds",
            "still running when it was stopped",
            "look for a loop that never ends (a `while` whose condition never changes, a stop rule that "
            "is never met) or far more work than the goal asks for",
        )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return Verdict(**json.loads(line[len(MARKER) :]))
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
    return Verdict(
        False,
        f"the check process ended (exit code {done.returncode}) before it could judge your file",
        str(path.name),
        "your module to import and return",
        tail or "no output",
        "does your file call sys.exit/os._exit, or crash the interpreter? Keep top-level code to definitions",
    )


def main(argv: list[str]) -> int:
    day, path = int(argv[0]), Path(argv[1])
    verdict = evaluate(exercise(day), path)
    sys.stdout.flush()
    print("\n" + MARKER + json.dumps(dataclasses.asdict(verdict)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
