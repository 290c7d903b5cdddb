"""`nanochat log post` and `nanochat log week`: drafts for building in public, from the learning log.

- `log post` reads one day's entry (`daily-log/YYYY-MM-DD.md`, the sections of `daily-log/TEMPLATE.md`) and
  drafts a post for X (at most 280 characters as X counts them) and one for LinkedIn (at most 3,000), each
  with the day's metric and failure, plus one chart (PNG) of the figures of the day's report: the
  `report.json` the metric names, else the newest one under models/ or runs/.
- `log week` reads the entries of the seven days ending on a date and drafts the weekly thread (numbered
  posts, each at most 280 as X counts) and a retrospective (Markdown).

Drafts are files only (default `daily-log/posts/`): nothing is posted, no network is used. A draft never
invents a metric or a failure: an entry whose sections are still the template's questions is refused.

X's count (`x_length`) follows twitter-text's documented rules (its v3 configuration): the text is NFC
normalized; every URL counts as 23 (the t.co link that replaces it); an emoji, however many code points it
joins (skin tones, ZWJ families, flags, keycaps), counts as 2; any other code point counts 1 in the ranges
U+0000–U+10FF, U+2000–U+200D, U+2010–U+201F and U+2032–U+2037, and 2 elsewhere (CJK, most symbols, the
ellipsis U+2026). URLs are those with http(s):// and bare domains under a few common top-level domains
(`BARE_TLDS`); emoji are recognized by their Unicode ranges, not by twemoji's list. A post fits when its
count is between 1 and 280 and it holds none of U+FFFE, U+FEFF, U+FFFF.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracks.daily_log import TODO, LogError, headline, latest_reports

X_LIMIT = 280
LINKEDIN_LIMIT = 3000
URL_LENGTH = 23
# (first, last, weight in characters) of twitter-text's v3 configuration; everything else weighs 2
LIGHT_RANGES = ((0x0000, 0x10FF), (0x2000, 0x200D), (0x2010, 0x201F), (0x2032, 0x2037))
BARE_TLDS = ("com", "org", "net", "io", "dev", "ai", "co", "app", "me", "uk", "de", "fr", "jp")
URL = re.compile(
    r"https?://[^\s<>\"]+[^\s<>\".,:;!?)\]'’]"  # a link with its scheme, without trailing punctuation
    r"|(?<![\w@.])(?:www\.)?(?:[a-z0-9-]+\.)+(?:"
    + "|".join(BARE_TLDS)
    + r")\b(?:/[^\s<>\"]*[^\s<>\".,:;!?)])?",
    re.IGNORECASE,
)
INVALID_CHARS = "\ufffe\ufeff\uffff"  # twitter-text refuses a post holding any of these
ZWJ, VS16, KEYCAP = "\u200d", "\ufe0f", "\u20e3"
ELLIPSIS = "…"
POSTS_DIR = Path("daily-log") / "posts"
QUESTION = TODO.split("{")[0]  # how `nanochat log draft` marks a section still to write
LABEL_CHARS = 36  # a chart's bar labels are cut (from the left) to this many characters


def _is_emoji_base(cp: int) -> bool:
    return (
        0x1F000 <= cp <= 0x1FAFF  # pictographs, emoticons, transport, supplemental symbols, flags' letters
        or 0x2600 <= cp <= 0x27BF  # miscellaneous symbols and dingbats
        or 0x2B00 <= cp <= 0x2BFF  # arrows and stars (⭐ ⬛)
        or cp in (0x231A, 0x231B, 0x23E9, 0x23EA, 0x23EB, 0x23EC, 0x23F0, 0x23F3, 0x2B50, 0x2B55)
    )


def _emoji_at(text: str, i: int) -> int:
    """The length (in code points) of the emoji sequence starting at `text[i]`, or 0 if none starts there."""
    cp = ord(text[i])
    n = len(text)
    if text[i] in "#*0123456789":  # keycap: the character, an optional VS16, U+20E3
        j = i + 1 + (i + 1 < n and text[i + 1] == VS16)
        return j + 1 - i if j < n and text[j] == KEYCAP else 0
    if 0x1F1E6 <= cp <= 0x1F1FF:  # a flag is a pair of regional indicators
        return 2 if i + 1 < n and 0x1F1E6 <= ord(text[i + 1]) <= 0x1F1FF else 1
    if not (
        _is_emoji_base(cp) or (cp in (0x00A9, 0x00AE, 0x203C, 0x2049, 0x2122) and text[i + 1 : i + 2] == VS16)
    ):
        return 0
    j = i + 1
    while j < n:
        c = ord(text[j])
        if text[j] == VS16 or 0x1F3FB <= c <= 0x1F3FF or 0xE0020 <= c <= 0xE007F:  # presentation, skin, tags
            j += 1
        elif text[j] == ZWJ and j + 1 < n and _is_emoji_base(ord(text[j + 1])):
            j += 2
        else:
            break
    return j - i


def _weight(char: str) -> int:
    cp = ord(char)
    return 1 if any(a <= cp <= b for a, b in LIGHT_RANGES) else 2


def x_length(text: str) -> int:
    """The length of `text` as X counts it against the 280 limit (see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    total, i = 0, 0
    urls = {m.start(): m.end() for m in URL.finditer(text)}
    while i < len(text):
        if i in urls:
            total += URL_LENGTH
            i = urls[i]
            continue
        span = _emoji_at(text, i)
        if span:
            total += 2
            i += span
        else:
            total += _weight(text[i])
            i += 1
    return total


def fits_x(text: str) -> bool:
    """Whether X accepts `text`: not blank, within 280, and free of the characters a post may not hold."""
    valid = not any(c in INVALID_CHARS for c in text)
    return valid and x_length(text.strip()) > 0 and x_length(text) <= X_LIMIT


def shorten(text: str, budget: int) -> str:
    """`text` cut at a word, with an ellipsis, to an X length of at most `budget`; "" if nothing fits."""
    if x_length(text) <= budget:
        return text
    words = text.split()
    while words and x_length(" ".join(words) + ELLIPSIS) > budget:
        words.pop()
    return " ".join(words) + ELLIPSIS if words else ""


@dataclass
class Entry:
    day: dt.date
    built: list[str]
    metric: str
    failure: str
    next_step: str
    report: str | None  # the report.json the metric names, if any


def _sections(text: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip().lower()
            found[current] = []
        elif current is not None and not line.lstrip().startswith("<!--"):
            found[current].append(line)
    return {k: "\n".join(v).strip() for k, v in found.items()}


def _plain(markdown: str) -> str:
    """One line of text: bullets, backticks and emphasis dropped, whitespace collapsed."""
    text = re.sub(r"^\s*[-*]\s+", "", markdown, flags=re.MULTILINE)
    return " ".join(text.replace("`", "").replace("**", "").split())


def _written(text: str, section: str, path: Path) -> str:
    """`text`, unless it is empty, a draft's question, or the template's own words (a copied template)."""
    template = path.with_name("TEMPLATE.md")
    lines = template.read_text(encoding="utf-8").splitlines() if template.is_file() else []
    if not text or QUESTION in text or text in {_plain(line) for line in lines}:
        raise LogError(f"{path}: write the '{section}' section first (a draft never invents it)")
    return text


def parse_entry(path: Path) -> Entry:
    """The sections of one log entry; LogError when one a post needs is missing or still a question."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LogError(f"cannot read the log entry {path}: {e.strerror}") from None
    try:
        day = dt.date.fromisoformat(path.stem)
    except ValueError:
        raise LogError(f"{path}: a log entry's name is its day, YYYY-MM-DD.md") from None
    sections = _sections(text)
    metric_lines = [
        line for line in sections.get("one metric", "").splitlines() if line.lstrip().startswith(("-", "*"))
    ]
    metric = _written(_plain(metric_lines[0]) if metric_lines else "", "One metric", path)
    failure = _written(
        _plain(sections.get("one failure and the fix plan", "").split("\n\n")[0]), "One failure", path
    )
    built = [_plain(line) for line in sections.get("what i built", "").splitlines() if line.strip()]
    built = [b for b in built if QUESTION not in b]
    report = re.search(r"`([^`]*report\.json)`", metric_lines[0]) if metric_lines else None
    next_step = _plain(sections.get("next step", ""))
    return Entry(day, built, metric, failure, "" if QUESTION in next_step else next_step,
                 report.group(1) if report else None)  # fmt: skip


def _subjects(entry: Entry) -> list[str]:
    """What was built, without the short hash a commit line starts with (a reader wants the subject)."""
    return [re.sub(r"^[0-9a-f]{7,12}\s+", "", b) for b in entry.built]


def x_post(entry: Entry, link: str | None = None, tag: str = "#buildinpublic") -> str:
    """The day's post for X: the metric always whole; the failure, then what was built, shortened to fit."""
    head = f"Building an LLM service in public, {entry.day.isoformat()}."
    metric = f"Metric: {entry.metric}"
    tail = " ".join(p for p in (link, tag) if p)
    fixed = "\n".join([head, metric, tail])
    if x_length(fixed) > X_LIMIT:
        raise LogError(f"the metric alone is too long for X ({x_length(metric)} of {X_LIMIT}): shorten it")
    budget = X_LIMIT - x_length(fixed) - 1  # the line break before the failure
    failure = shorten(f"Failure: {entry.failure}", budget)
    lines = [head, metric] + ([failure] if failure else [])
    built = "; ".join(_subjects(entry))
    if built:
        room = X_LIMIT - x_length("\n".join([*lines, tail])) - 1
        built_line = shorten(f"Built: {built}", room)
        if built_line:
            lines.insert(1, built_line)
    post = "\n".join([*lines, tail])
    assert x_length(post) <= X_LIMIT, post
    return post


def linkedin_post(entry: Entry, link: str | None = None) -> str:
    """The day's LinkedIn post: what was built, the metric, the failure and its fix plan, the next step."""
    parts = [
        f"Building a small LLM service in public: {entry.day.strftime('%A %d %B %Y')}.",
        "What I built:\n" + "\n".join(f"• {b}" for b in _subjects(entry)) if entry.built else "",
        f"The metric of the day: {entry.metric}",
        f"What failed, and the plan: {entry.failure}",
        f"Next: {entry.next_step}" if entry.next_step else "",
        f"The code: {link}" if link else "",
        "#buildinpublic #llm #mlops",
    ]
    text = "\n\n".join(p for p in parts if p)
    if len(text) > LINKEDIN_LIMIT:  # the list of what was built goes first
        keep = LINKEDIN_LIMIT - (len(text) - len(parts[1])) - 1
        parts[1] = parts[1][:keep].rsplit("\n", 1)[0] + "\n…"
        text = "\n\n".join(p for p in parts if p)
    return text


def report_for(entry: Entry, repo: Path) -> Path | None:
    if entry.report and (repo / entry.report).is_file():
        return repo / entry.report
    reports = latest_reports(repo, 1)
    return reports[0] if reports else None


def chart(report: Path, out: Path, title: str) -> Path:
    """A bar chart of the report's headline figures (accuracy, F1, bpb, losses) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        figures = headline(json.loads(report.read_text()))[:8]
    except (OSError, json.JSONDecodeError) as e:
        raise LogError(f"cannot read the report {report}: {e}") from None
    if not figures:
        raise LogError(f"{report} has no headline figure (accuracy, F1, bpb, loss) to chart")
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.45 * len(figures)), dpi=100)
    names = [n if len(n) <= LABEL_CHARS else "…" + n[-LABEL_CHARS + 1 :] for n, _ in figures]
    values = [v for _, v in figures]
    bars = ax.barh(names, values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.margins(x=0.2)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def entry_path(repo: Path, day: dt.date) -> Path:
    return repo / "daily-log" / f"{day.isoformat()}.md"


def week_entries(repo: Path, last_day: dt.date) -> list[Entry]:
    """The written entries of the seven days ending on `last_day`, oldest first (missing days skipped)."""
    days = [last_day - dt.timedelta(days=k) for k in range(6, -1, -1)]
    entries = [parse_entry(entry_path(repo, d)) for d in days if entry_path(repo, d).is_file()]
    if not entries:
        raise LogError(f"no log entry in daily-log/ for the week {days[0]} to {last_day}")
    return entries


def week_thread(entries: list[Entry], link: str | None = None) -> list[str]:
    """Numbered posts: an opening, one per day (its metric whole, its failure shortened), a closing."""
    total = len(entries) + 2
    first, last = entries[0].day, entries[-1].day
    posts = [f"A week of building a small LLM service in public, {first} to {last}: one metric and one "
             "failure a day. A thread."]  # fmt: skip
    for entry in entries:
        number = f"{len(posts) + 1}/{total}"
        fixed = f"{entry.day.strftime('%a %d %b')}: {entry.metric}"
        if x_length(f"{fixed} {number}") > X_LIMIT:
            raise LogError(f"the metric of {entry.day} is too long for X: shorten it")
        budget = X_LIMIT - x_length(f"{fixed}\n {number}")  # the line break, the space before the number
        failure = shorten(f"Failed: {entry.failure}", budget)
        posts.append("\n".join([fixed, *([failure] if failure else [])]))
    nexts = [e.next_step for e in entries if e.next_step]
    closing = f"Next week: {nexts[-1]}" if nexts else "Next week: more of the same, one day at a time."
    posts.append(" ".join(p for p in (closing, link) if p))
    numbered = []
    for i, post in enumerate(posts, 1):
        number = f" {i}/{total}"
        numbered.append(shorten(post, X_LIMIT - x_length(number)) + number)
    return numbered


def retrospective(entries: list[Entry]) -> str:
    lines = [
        f"# Week {entries[0].day} to {entries[-1].day}: retrospective",
        "",
        "| day | metric | failure and fix plan |",
        "|---|---|---|",
    ]
    lines += [f"| {e.day} | {e.metric} | {e.failure} |".replace("\n", " ") for e in entries]
    built = [b for e in entries for b in e.built]
    lines += ["", f"## What was built ({len(built)} items)", ""] + [f"- {b}" for b in built]
    lines += ["", "## Next steps named", ""] + [f"- {e.day}: {e.next_step}" for e in entries if e.next_step]
    lines += [
        "",
        "## Questions for the retrospective",
        "",
        "- Which failure's fix plan worked, and which failure came back?",
        "- Which metric moved the most, and was it the one that mattered?",
        "",
    ]
    return "\n".join(lines)


def register(commands: Any) -> None:
    """Add `post` and `week` to the `log` command group (tracks/daily_log.py)."""
    for name, help_text, handler in (
        ("post", "draft the day's posts (X, LinkedIn) and chart from its log entry", cmd_post),
        ("week", "draft the weekly thread and retrospective from the week's log entries", cmd_week),
    ):
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument("--repo", default=".", help="repository root (default .)")
        parser.add_argument(
            "--date",
            type=dt.date.fromisoformat,
            default=None,
            help="YYYY-MM-DD (default today; for week: its last day)",
        )
        parser.add_argument("--link", help="a link to add (X counts it as 23 characters)")
        parser.add_argument("--out", help="folder for the drafts (default daily-log/posts/DATE or week-DATE)")
        parser.set_defaults(handler=handler)


def _out(args: argparse.Namespace, name: str) -> Path:
    return Path(args.out) if args.out else Path(args.repo) / POSTS_DIR / name


def cmd_post(args: argparse.Namespace) -> int:
    repo, day = Path(args.repo), args.date or dt.date.today()
    entry = parse_entry(entry_path(repo, day))
    out = _out(args, day.isoformat())
    out.mkdir(parents=True, exist_ok=True)
    x = x_post(entry, args.link)
    (out / "x.txt").write_text(x + "\n", encoding="utf-8")
    (out / "linkedin.md").write_text(linkedin_post(entry, args.link) + "\n", encoding="utf-8")
    report = report_for(entry, repo)
    written = ["x.txt", "linkedin.md"]
    if report is not None:
        chart(report, out / "chart.png", f"{day}: {report.relative_to(repo)}")
        written.append("chart.png")
    else:
        print("log post: no report.json under models/ or runs/: no chart")
    print(
        f"log post: {', '.join(written)} -> {out} (X: {x_length(x)}/{X_LIMIT}); drafts only, nothing posted"
    )
    return 0


def cmd_week(args: argparse.Namespace) -> int:
    repo, day = Path(args.repo), args.date or dt.date.today()
    entries = week_entries(repo, day)
    thread = week_thread(entries, args.link)
    out = _out(args, f"week-{day.isoformat()}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "thread.txt").write_text("\n\n---\n\n".join(thread) + "\n", encoding="utf-8")
    (out / "retrospective.md").write_text(retrospective(entries), encoding="utf-8")
    print(f"log week: {len(thread)} posts and a retrospective -> {out}; drafts only, nothing posted")
    return 0
