"""Documents into chunks: Markdown, plain text and HTML, split by headings, then by paragraphs with overlap.

Every chunk is a character span of its source's text: `source_text(path)[chunk.start:chunk.end] ==
chunk.text`. For Markdown and text files the source text is the file decoded as UTF-8, byte for byte (no
newline translation); for HTML it is the visible text `html_to_text` extracts (headings kept as Markdown
`#` lines, scripts and styles dropped), so an HTML chunk's span points into that text, not into the markup.

A section runs from one heading line to the next heading of any level; its chunks carry the heading trail
("Install > From source"). A section longer than `max_chars` is packed paragraph by paragraph into chunks
of at most `max_chars`, each next chunk starting up to `overlap` characters before the previous one ended
(at a paragraph boundary when there is one). Headings are ATX (`## Title`; not underlined Setext ones);
those inside fenced code blocks are not headings.
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

from nanochat.rag import Chunk, RagError

MAX_CHARS = 1200
OVERLAP = 200
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
TEXT_SUFFIXES = (".txt", ".text", ".rst")
SUFFIXES = MARKDOWN_SUFFIXES + HTML_SUFFIXES + TEXT_SUFFIXES

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def source_text(path: Path) -> str:
    """The text a source's chunk spans index (see the module docstring)."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RagError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return html_to_text(raw) if path.suffix.lower() in HTML_SUFFIXES else raw


def chunk_source(path: Path, source: str, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> list[Chunk]:
    """The chunks of one file; `source` is the name they carry (the path as given)."""
    text = source_text(path)
    markdown = path.suffix.lower() in MARKDOWN_SUFFIXES + HTML_SUFFIXES
    return chunk_text(text, source, markdown=markdown, max_chars=max_chars, overlap=overlap)


def chunk_text(
    text: str, source: str, markdown: bool = True, max_chars: int = MAX_CHARS, overlap: int = OVERLAP
) -> list[Chunk]:
    if max_chars < 1 or not 0 <= overlap < max_chars:
        raise RagError(
            f"chunking needs max_chars >= 1 and 0 <= overlap < max_chars, got {max_chars}, {overlap}"
        )
    sections = _markdown_sections(text) if markdown else [("", 0, len(text))]
    chunks = []
    for heading, start, end in sections:
        for s, e in _pack(text, start, end, max_chars, overlap):
            chunks.append(Chunk(_chunk_id(source, heading, s, e), source, heading, s, e, text[s:e]))
    return chunks


def _chunk_id(source: str, heading: str, start: int, end: int) -> str:
    return hashlib.sha1(f"{source}\0{heading}\0{start}\0{end}".encode()).hexdigest()[:16]


def _markdown_sections(text: str) -> list[tuple[str, int, int]]:
    """(heading trail, start, end) of each section: the text before the first heading, then each heading's."""
    trail: list[tuple[int, str]] = []
    sections: list[tuple[str, int, int]] = []
    current, current_start = "", 0
    in_fence = False
    pos = 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if match:
            sections.append((current, current_start, pos))
            level = len(match.group(1))
            trail = [(lv, title) for lv, title in trail if lv < level] + [(level, match.group(2).strip())]
            current, current_start = " > ".join(title for _, title in trail), pos
        pos += len(line)
    sections.append((current, current_start, len(text)))
    return [(h, s, e) for h, s, e in sections if text[s:e].strip()]


def _pack(text: str, start: int, end: int, max_chars: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of at most max_chars covering [start, end) with whitespace trimmed, overlapping by <= overlap."""
    start, end = _trim(text, start, end)
    if start >= end:
        return []
    # paragraph starts are the preferred cut points; long paragraphs are also cut at whitespace
    cuts = sorted({m.end() for m in _BLANK_LINES.finditer(text, start, end)} | {start})
    spans = []
    s = start
    while True:
        if end - s <= max_chars:
            spans.append(_trim(text, s, end))
            return spans
        limit = s + max_chars
        e = max((c for c in cuts if s < c <= limit), default=None)
        if e is None or e - s < max_chars // 2:  # no paragraph break late enough: cut at whitespace
            space = text.rfind(" ", s + max_chars // 2, limit)
            e = space + 1 if space >= 0 else limit
        spans.append(_trim(text, s, e))
        # the next chunk starts at a paragraph (else a word) within the last `overlap` characters
        back = max(e - overlap, s + 1)
        nxt = min((c for c in cuts if back <= c < e), default=None)
        if nxt is None:
            space = text.find(" ", back, e)
            nxt = space + 1 if space >= 0 and space + 1 < e else e
        s = _trim(text, nxt, end)[0]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class _TextExtractor(HTMLParser):
    BLOCKS = frozenset(
        ("p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "ul", "ol", "li", "tr",
         "table", "pre", "blockquote", "br", "hr", "dl", "dt", "dd", "figure", "figcaption", "form")
    )  # fmt: skip
    SKIP = frozenset(("script", "style", "noscript", "template", "head"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")
            self.pre_depth += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCKS:
            self.parts.append("\n\n")
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        self.parts.append(data if self.pre_depth else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """An HTML document's visible text: headings as Markdown `#` lines, paragraphs blank-line separated."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
