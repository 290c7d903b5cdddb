"""Chunking: spans that round-trip to the source text, heading trails, size and overlap, HTML text."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from nanochat.rag import RagError
from nanochat.rag.chunking import chunk_source, chunk_text, html_to_text, source_text
from nanochat.rag.index import expand_paths

REPO = Path(__file__).resolve().parents[2]


def test_every_chunk_of_the_repository_docs_is_its_span_of_the_source_text(monkeypatch):
    monkeypatch.chdir(REPO)
    files = expand_paths(["README.md", "docs"])
    assert len(files) > 10
    for path, source in files:
        text = source_text(path)
        chunks = chunk_source(path, source)
        assert chunks, source
        for chunk in chunks:
            assert text[chunk.start : chunk.end] == chunk.text
            assert chunk.source == source and chunk.text.strip() == chunk.text


def test_spans_round_trip_in_markdown_text_and_html_with_crlf_and_unicode(corpus: Path):
    (corpus / "crlf.md").write_bytes("# Über\r\n\r\nZeile eins — ✓\r\n\r\n## Zwei\r\nmehr\r\n".encode())
    for path, source in expand_paths([corpus]):
        text = source_text(path)
        for chunk in chunk_source(path, source, max_chars=40, overlap=10):
            assert text[chunk.start : chunk.end] == chunk.text
    crlf = chunk_source(corpus / "crlf.md", "crlf.md")
    assert [c.heading for c in crlf] == ["Über", "Über > Zwei"]
    assert "\r\n" in crlf[0].text  # the bytes' newlines, not translated


def test_heading_trails_follow_levels_and_ignore_headings_in_code_fences():
    text = "intro\n\n# A\n\ntext a\n\n## B\n\n```sh\n# not a heading\n```\n\n"
    text += "### C\n\nc\n\n## D\n\nd\n\n# E\n\ne\n"
    chunks = chunk_text(text, "t.md")
    assert [c.heading for c in chunks] == ["", "A", "A > B", "A > B > C", "A > D", "E"]
    assert "# not a heading" in chunks[2].text
    assert chunks[1].text.startswith("# A")


def test_long_sections_are_cut_within_max_chars_with_overlap_covering_everything():
    rng = random.Random(0)
    words = [rng.choice(["alpha", "beta", "gamma", "delta", "epsilon"]) for _ in range(3000)]
    paragraphs = [" ".join(words[i : i + rng.randint(5, 60)]) for i in range(0, 3000, 60)]
    text = "# Long\n\n" + "\n\n".join(paragraphs) + "\n"
    for max_chars, overlap in ((300, 0), (300, 100), (1200, 200), (50, 49)):
        chunks = chunk_text(text, "long.md", max_chars=max_chars, overlap=overlap)
        assert all(len(c.text) <= max_chars for c in chunks)
        for prev, nxt in itertools.pairwise(chunks):
            assert prev.start < nxt.start <= prev.end + 2  # no gap beyond the blank line between paragraphs
            assert prev.end - nxt.start <= overlap
        covered = set()
        for c in chunks:
            covered.update(range(c.start, c.end))
        assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    overlapping = chunk_text(text, "long.md", max_chars=300, overlap=100)
    assert any(prev.end > nxt.start for prev, nxt in itertools.pairwise(overlapping))


def test_ids_are_stable_and_distinct():
    text = "# A\n\none\n\n# B\n\ntwo\n"
    first, again = chunk_text(text, "a.md"), chunk_text(text, "a.md")
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    assert {c.id for c in chunk_text(text, "b.md")}.isdisjoint(c.id for c in first)


def test_html_keeps_visible_text_and_headings_and_drops_scripts_and_styles(corpus: Path):
    text = html_to_text((corpus / "web" / "alerts.html").read_text())
    assert "# Alerts" in text and "## Queue saturated" in text
    assert "var ignored" not in text and "color: red" not in text
    chunks = chunk_source(corpus / "web" / "alerts.html", "alerts.html")
    assert [c.heading for c in chunks] == ["Alerts", "Alerts > Queue saturated"]
    assert "scale out or lower the request rate" in chunks[1].text


def test_plain_text_has_no_headings(corpus: Path):
    chunks = chunk_source(corpus / "notes" / "quantization.txt", "q.txt")
    assert [c.heading for c in chunks] == [""]


def test_bad_input_is_a_rag_error(tmp_path: Path):
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(RagError, match="not UTF-8"):
        chunk_source(tmp_path / "bad.md", "bad.md")
    with pytest.raises(RagError, match="overlap"):
        chunk_text("x", "x.md", max_chars=10, overlap=10)
    with pytest.raises(RagError, match="no such file"):
        expand_paths([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagError, match=r"no \.md"):
        expand_paths([tmp_path / "empty"])
