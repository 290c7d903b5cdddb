"""`nanochat log post` and `nanochat log week`: X's counting rules on tricky text, posts that keep the metric
when they must be shortened, the weekly thread, and the drafts written as files (nothing posted)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from nanochat.cli import main
from tracks.build_in_public import (
    LINKEDIN_LIMIT,
    X_LIMIT,
    Entry,
    fits_x,
    linkedin_post,
    parse_entry,
    shorten,
    week_entries,
    x_length,
    x_post,
)
from tracks.daily_log import LogError


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("hello", 5),
        ("https://example.com", 23),  # a short link still counts as the t.co link
        ("https://github.com/karpathy/nanochat/blob/master/nanochat/engine.py?plain=1#L10", 23),
        ("see https://a.io/x and http://b.dev/y.", 4 + 23 + 5 + 23 + 1),  # the full stop is not the link's
        ("example.com", 23),  # a bare domain is a link too
        ("file.txt", 8),  # not a top-level domain X links
        ("漢字", 4),  # CJK counts 2 each
        ("日本語のテキスト", 16),
        ("👍", 2),
        ("👍🏽", 2),  # with a skin tone: one emoji
        ("👨\u200d👩\u200d👧\u200d👦", 2),  # a ZWJ family of 7 code points
        ("🇯🇵🇫🇷", 4),  # two flags
        ("1\ufe0f\u20e3", 2),  # a keycap
        ("❤\ufe0f", 2),
        ("e\u0301", 1),  # NFC: é
        ("—“”‘’", 5),  # dashes and quotes are in the light ranges
        ("…", 2),  # the ellipsis is not
        ("é ñ ü ß", 7),
        ("", 0),
    ],
)
def test_x_counts_as_twitter_text_documents(text: str, length: int) -> None:
    assert x_length(text) == length


def test_exactly_280_fits_and_281_does_not() -> None:
    assert fits_x("a" * 280) and not fits_x("a" * 281)
    assert fits_x("漢" * 140) and not fits_x("漢" * 140 + "a")
    link = "https://example.com/" + "x" * 300  # 320 characters, 23 as X counts
    assert fits_x("a" * 257 + link) and not fits_x("a" * 258 + link)
    assert not fits_x("   ")
    assert not fits_x("hello\ufeff")  # a byte-order mark is refused, whatever the length


def test_shorten_cuts_at_a_word_with_an_ellipsis() -> None:
    assert shorten("one two three", 100) == "one two three"
    assert shorten("one two three", 9) == "one two…"
    assert x_length(shorten("漢字 漢字 漢字", 9)) <= 9
    assert shorten("unbreakable", 3) == ""


def entry(**changes) -> Entry:
    fields = {
        "day": dt.date(2030, 5, 1),
        "built": ["abc1234 Train the fortunes classifier", "def5678 Chaos tests for the service"],
        "metric": "fortunes macro-F1 0.597 (models/fortunes/v1/report.json)",
        "failure": "the SVC had no probabilities, so the guardrail threshold could not be set",
        "next_step": "nanochat classify train --model logreg",
        "report": None,
    }
    return Entry(**{**fields, **changes})


def test_a_short_day_is_posted_whole_with_metric_failure_and_link() -> None:
    post = x_post(entry(), link="https://github.com/example/nanochat")
    assert "Metric: fortunes macro-F1 0.597" in post and "Failure: the SVC had no probabilities" in post
    assert "Train the fortunes classifier" in post and "https://github.com/example/nanochat" in post
    assert "abc1234" not in post  # the subject, not the hash
    assert x_length(post) <= X_LIMIT


def test_a_long_day_is_shortened_but_keeps_its_metric() -> None:
    long = entry(
        failure="the run diverged " * 40,
        built=[f"abc{i:04d} commit number {i} with a long subject line" for i in range(30)],
        metric="val bpb 1.7302 → 1.6811 (漢字 included, 🚀)",
    )
    post = x_post(long, link="https://example.com/" + "p" * 200)
    assert x_length(post) <= X_LIMIT
    assert "Metric: val bpb 1.7302 → 1.6811 (漢字 included, 🚀)" in post
    assert "Failure: the run diverged" in post and post.count("…") >= 1
    assert x_length(post) > X_LIMIT - 30  # the room was used, not thrown away


def test_a_metric_too_long_for_x_is_refused_not_cut() -> None:
    with pytest.raises(LogError, match="metric"):
        x_post(entry(metric="漢" * 200))


def test_linkedin_keeps_everything_within_3000() -> None:
    text = linkedin_post(entry(), link="https://example.com")
    for part in (
        "fortunes macro-F1 0.597",
        "no probabilities",
        "Next: nanochat classify",
        "https://example.com",
    ):
        assert part in text
    huge = linkedin_post(entry(built=[f"commit {i} " + "x" * 80 for i in range(100)]))
    assert len(huge) <= LINKEDIN_LIMIT and "fortunes macro-F1 0.597" in huge and "no probabilities" in huge


def write_entry(repo: Path, day: str, metric: str, failure: str, next_step: str = "run the next day") -> Path:
    path = repo / "daily-log" / f"{day}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {day}\n\n## What I built\n\n- abc1234 Work of {day}\n\n## One metric\n\n- {metric}\n\n"
        "Which one matters today, and what did you expect it to be?\n\n"
        f"## One failure and the fix plan\n\n{failure}\n\n## Next step\n\n{next_step}\n"
    )
    return path


def test_an_entry_still_holding_the_templates_questions_is_refused(tmp_path: Path) -> None:
    path = write_entry(tmp_path, "2030-05-01", "val bpb 1.73", "_(to write: what broke or surprised you)_")
    with pytest.raises(LogError, match="One failure"):
        parse_entry(path)
    template = Path(__file__).resolve().parents[2] / "daily-log" / "TEMPLATE.md"
    copied = tmp_path / "daily-log" / "2030-05-02.md"
    copied.write_text(template.read_text())
    shutil.copy(template, tmp_path / "daily-log" / "TEMPLATE.md")
    with pytest.raises(LogError, match="One metric"):
        parse_entry(copied)


def test_log_post_writes_the_drafts_and_a_chart_from_the_named_report(tmp_path: Path, capsys) -> None:
    report = tmp_path / "models" / "fortunes" / "v1" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"test": {"accuracy": 0.612, "macro_f1": 0.597}}))
    write_entry(
        tmp_path,
        "2030-05-01",
        "`models/fortunes/v1/report.json`: test.macro_f1 0.597",
        "SVC lacks probabilities",
    )
    assert (
        main(["log", "post", "--repo", str(tmp_path), "--date", "2030-05-01", "--link", "https://x.org/a"])
        == 0
    )
    out = tmp_path / "daily-log" / "posts" / "2030-05-01"
    x = (out / "x.txt").read_text().strip()
    assert "test.macro_f1 0.597" in x and "SVC lacks probabilities" in x and x_length(x) <= X_LIMIT
    assert "test.macro_f1 0.597" in (out / "linkedin.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nothing posted" in capsys.readouterr().out


def test_log_post_without_an_entry_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    assert main(["log", "post", "--repo", str(tmp_path), "--date", "2030-05-01"]) == 1
    err = capsys.readouterr().err
    assert "2030-05-01.md" in err and "Traceback" not in err


def test_the_week_thread_numbers_every_post_within_280_and_keeps_each_metric(tmp_path: Path) -> None:
    for i in range(1, 8):
        write_entry(tmp_path, f"2030-05-0{i}", f"val bpb 1.{70 - i} on day {i}", "a long failure story " * 30)
    write_entry(tmp_path, "2030-04-30", "the day before the week", "not in the thread")
    assert main(["log", "week", "--repo", str(tmp_path), "--date", "2030-05-07"]) == 0
    out = tmp_path / "daily-log" / "posts" / "week-2030-05-07"
    posts = (out / "thread.txt").read_text().strip().split("\n\n---\n\n")
    assert len(posts) == 9  # an opening, seven days, a closing
    for i, post in enumerate(posts, 1):
        assert post.endswith(f" {i}/9") and x_length(post) <= X_LIMIT
    for i in range(1, 8):
        assert f"val bpb 1.{70 - i} on day {i}" in posts[i]
    assert "the day before the week" not in "".join(posts)
    retro = (out / "retrospective.md").read_text()
    assert retro.count("| 2030-05-0") == 7 and "Questions for the retrospective" in retro


def test_a_week_without_entries_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no log entry"):
        week_entries(tmp_path, dt.date(2030, 5, 7))
