"""The metric catalog of docs/observability.md as data, for the tests that hold the code to it.

`metric_catalog()` parses the Metrics table (name, type, labels, meaning) and the sentence after it that
gives each gauge's multiprocess mode. A metric whose meaning says it exists only sometimes ("only when
NVML finds a GPU", "when it has one") is `optional`: a machine without a GPU or a memory limit has no series
of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"
ROW = re.compile(r"^\| `(nanochat_\w+)` \| (\w+) \| ([^|]*) \| (.*) \|$", re.MULTILINE)
MODES = re.compile(r"((?:`nanochat_\w+`(?:, | and )?)+) \(`(live\w+)`")
OPTIONAL = re.compile(r"\bonly when\b|\bwhen it has one\b")
DEFAULT_MODE = "livesum"


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed (counters end in _total)
    type: str
    labels: tuple[str, ...]
    meaning: str
    optional: bool
    mode: str | None  # multiprocess mode (gauges only)

    @property
    def series(self) -> tuple[str, ...]:
        """The series names Prometheus stores for it."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def metric_catalog(path: Path = DOC) -> dict[str, Metric]:
    text = path.read_text()
    rows = ROW.findall(text)
    if not rows:
        raise ValueError(f"{path}: no rows in the Metrics table")
    modes: dict[str, str] = {}
    for names, mode in MODES.findall(" ".join(text.split())):  # the sentence wraps over lines
        for name in re.findall(r"`(nanochat_\w+)`", names):
            modes[name] = mode
    catalog = {}
    for name, kind, labels, meaning in rows:
        catalog[name] = Metric(
            name=name,
            type=kind,
            labels=tuple(re.findall(r"`(\w+)`", labels)),
            meaning=meaning.strip(),
            optional=bool(OPTIONAL.search(meaning)),
            mode=modes.get(name, DEFAULT_MODE) if kind == "gauge" else None,
        )
    return catalog
