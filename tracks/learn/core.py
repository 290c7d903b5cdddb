"""What an exercise is, and how one attempt is judged (in the current process: `runner` isolates it).

A check is a function of the learner's imported module that raises `Failure` for the first wrong
behaviour it finds. `evaluate` turns everything else an attempt can do (not import, raise, leave a TODO)
into the same reviewer-style `Verdict`, never a traceback dump.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

LEVELS = ("beginner", "intermediate", "production")
DAYS = (1, 2, 16, 17, 18, 19, 20, 21, 22, 24, 26, 27, 31, 33, 34, 41)  # the days with an exercise


class LearnError(ValueError):
    """A learn command that cannot run (unknown day, missing file); the message says what to do."""


class Failure(Exception):
    """One wrong behaviour: what, on which input, expected vs got, and a targeted hint."""

    def __init__(self, behaviour: str, input: str, expected: str, got: str, hint: str) -> None:
        super().__init__(behaviour)
        self.behaviour, self.input, self.expected, self.got, self.hint = behaviour, input, expected, got, hint


@dataclass(frozen=True)
class Exercise:
    day: int
    slug: str
    title: str
    level: str
    hints: tuple[str, str, str]  # graded: a nudge, the idea, nearly the code
    reference: tuple[str, ...]  # the project's own tested code that does the same ("path: what")
    check: Callable[[ModuleType], None]

    @property
    def filename(self) -> str:
        return f"day{self.day:02d}_{self.slug}.py"

    def _package_file(self, folder: str) -> Path:
        return Path(__file__).parent / folder / self.filename

    @property
    def starter(self) -> Path:
        return self._package_file("starters")

    @property
    def solution(self) -> Path:
        return self._package_file("solutions")

    @property
    def goal(self) -> str:
        """The starter's docstring: the goal in a few lines."""
        import ast

        return ast.get_docstring(ast.parse(self.starter.read_text())) or ""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    behaviour: str = ""
    input: str = ""
    expected: str = ""
    got: str = ""
    hint: str = ""

    def message(self, exercise: Exercise) -> str:
        if self.passed:
            return f"✓ day {exercise.day}, {exercise.title}: every check passes"
        lines = [f"✗ day {exercise.day}, {exercise.title}: {self.behaviour}"]
        for name in ("input", "expected", "got"):
            if getattr(self, name):
                lines.append(f"  {name + ':':9} {getattr(self, name)}")
        lines.append(f"  hint:     {self.hint}")
        return "\n".join(lines)


def exercise(day: int) -> Exercise:
    if day not in DAYS:
        raise LearnError(f"day {day} has no exercise; the days with one are {', '.join(map(str, DAYS))}")
    return importlib.import_module(f"tracks.learn.days.day{day:02d}").EXERCISE


def load_attempt(path: Path) -> ModuleType:
    """Import the learner's file as a fresh module (a new name each time, so edits are always seen)."""
    name = f"learn_attempt_{abs(hash((str(path), path.stat().st_mtime_ns)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _where(error: BaseException, path: Path) -> str:
    """`line N: <code>` of the deepest frame in the learner's file, or '' when it is not in it."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    return f"line {frames[-1].lineno}: `{(frames[-1].line or '').strip()}`" if frames else ""


def evaluate(ex: Exercise, path: str | Path) -> Verdict:
    """Import `path` and run the exercise's check; every outcome is a Verdict."""
    path = Path(path).resolve()
    try:
        module = load_attempt(path)
        ex.check(module)
    except Failure as f:
        return Verdict(False, f.behaviour, f.input, f.expected, f.got, f.hint)
    except NotImplementedError as e:
        where = _where(e, path)
        return Verdict(
            False,
            "a TODO is not written yet" + (f": {e}" if str(e) else ""),
            "",
            f"your code at {where}" if where else "your code",
            "the starter's placeholder (NotImplementedError)",
            ex.hints[0],
        )
    except ModuleNotFoundError as e:
        return Verdict(
            False,
            f"module {e.name!r} is not installed",
            _where(e, path) or "the check's imports",
            "the learning tracks' packages",
            f"ModuleNotFoundError: {e}",
            "pip install -e '.[tracks]' (or fix the import's name if it is yours)",
        )
    except SyntaxError as e:
        return Verdict(
            False,
            "the file does not parse",
            f"line {e.lineno}: `{(e.text or '').strip()}`",
            "valid Python",
            f"SyntaxError: {e.msg}",
            "fix the line shown, then check again",
        )
    except (Exception, SystemExit) as e:  # the learner's code raised: say where, not the whole traceback
        return Verdict(
            False,
            "your code raised an exception",
            _where(e, path) or "while the check called your code",
            "a result",
            f"{type(e).__name__}: {str(e)[:300]}",
            ex.hints[0],
        )
    return Verdict(True)


def close(got, expected, atol: float = 1e-6) -> bool:
    """Tensors/arrays of the same shape and values within atol (False, not an error, on any mismatch)."""
    import torch

    got, expected = torch.as_tensor(got), torch.as_tensor(expected)
    return got.shape == expected.shape and bool(torch.allclose(got.double(), expected.double(), atol=atol))
