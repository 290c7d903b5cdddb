"""docs/learning-path.md stays a usable plan: 60 days, four phases, every link and file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PATH = REPO / "docs" / "learning-path.md"
DOCS = [PATH, REPO / "docs" / "learn" / "README.md", REPO / "docs" / "classify.md", REPO / "docs" / "hf.md"]


def test_sixty_days_in_four_phases_each_with_run_measure_write():
    text = PATH.read_text()
    phases = re.findall(r"^## Phase (\d) — .+ \(days (\d+)–(\d+)\)$", text, flags=re.MULTILINE)
    assert [(int(p), int(a), int(b)) for p, a, b in phases] == [
        (1, 1, 15),
        (2, 16, 30),
        (3, 31, 45),
        (4, 46, 60),
    ]
    rows = re.findall(r"^\| (\d+) \|(.+)$", text, flags=re.MULTILINE)
    assert [int(day) for day, _ in rows] == list(range(1, 61))
    for day, rest in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", rest)[:3]]
        assert len(cells) == 3 and all(cells), f"day {day} lacks a run, a measure or a write-down"


def test_every_relative_link_resolves():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)} links to missing {target}"


def test_the_template_has_the_four_sections_the_draft_fills():
    template = (REPO / "daily-log" / "TEMPLATE.md").read_text()
    for heading in ("## What I built", "## One metric", "## One failure and the fix plan", "## Next step"):
        assert heading in template


def test_the_guardrail_set_is_described_with_its_real_size():
    from tracks.classify.dataset import load_guardrail_data

    counts = load_guardrail_data().counts()
    total = sum(counts.values())
    text = (REPO / "docs" / "classify.md").read_text()
    assert f"**{total} examples, {counts['benign']} benign and {counts['injection']} injection**" in text
