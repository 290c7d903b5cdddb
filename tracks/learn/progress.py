"""The learner's progress in the workspace (`.learn/progress.json`): attempts, passes, hints, reveals.

Dates are local calendar days (ISO strings); the streak counts consecutive days on which at least one
exercise was passed, ending today or yesterday.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

FILE = ".learn/progress.json"


@dataclass
class DayProgress:
    started: str | None = None
    attempts: int = 0
    passed_on: str | None = None
    hints_seen: int = 0
    revealed_on: str | None = None


@dataclass
class Progress:
    workspace: Path
    days: dict[int, DayProgress] = field(default_factory=dict)

    @classmethod
    def load(cls, workspace: Path) -> Progress:
        path = workspace / FILE
        if not path.exists():
            return cls(workspace)
        raw = json.loads(path.read_text())
        return cls(workspace, {int(k): DayProgress(**v) for k, v in raw.get("days", {}).items()})

    def save(self) -> None:
        path = self.workspace / FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"days": {str(k): vars(v) for k, v in sorted(self.days.items())}}
        path.write_text(json.dumps(data, indent=2) + "\n")

    def day(self, day: int) -> DayProgress:
        return self.days.setdefault(day, DayProgress())

    def state(self, day: int) -> str:
        p = self.days.get(day)
        if p is None:
            return ""
        if p.passed_on:
            return "done" + (" (revealed)" if p.revealed_on else "")
        if p.revealed_on:
            return "revealed"
        return "attempted" if p.attempts else "started"

    def streak(self, today: dt.date) -> int:
        passed = {dt.date.fromisoformat(p.passed_on) for p in self.days.values() if p.passed_on}
        day = today if today in passed else today - dt.timedelta(days=1)
        count = 0
        while day in passed:
            count, day = count + 1, day - dt.timedelta(days=1)
        return count
