"""Converters of the demo corpora, on small inputs written here in each source's format."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat.data.conversations import conversation_problem
from nanochat.data.sources import (
    KJV_BOOKS,
    CorpusError,
    chatterbot_conversations,
    jargon_documents,
    kjv_documents,
    pack_documents,
    shakespeare_documents,
    split_text,
    strip_gutenberg,
    text_documents,
)


def test_split_text_prefers_paragraphs_then_lines_then_spaces():
    text = "first paragraph\n\nsecond paragraph\n\nthird"
    assert split_text(text, 40) == [text]
    assert split_text(text, 39) == ["first paragraph\n\nsecond paragraph", "third"]
    assert split_text("line one\nline two\nline three", 18) == ["line one\nline two", "line three"]
    assert split_text("aaa bbb ccc ddd", 7) == ["aaa bbb", "ccc ddd"]
    assert split_text("x" * 30, 10) == ["x" * 30]  # one word longer than the limit stays whole


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.text(alphabet="abcdé🦀", min_size=1, max_size=30), min_size=1, max_size=6),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=5, max_value=120),
)
def test_documents_keep_every_word_in_order_and_respect_the_limit(paragraph_words, max_chars):
    text = "\n\n".join(" ".join(words) for words in paragraph_words)
    documents = text_documents(text, max_chars)
    assert [w for doc in documents for w in doc.split()] == text.split()
    for doc in documents:
        assert len(doc) <= max_chars or " " not in doc.strip()


def test_pack_documents_keeps_units_whole_when_they_fit():
    units = ["a" * 30, "b" * 30, "c" * 30, "d" * 100]
    docs = pack_documents(units, max_chars=70)
    assert docs == ["a" * 30 + "\n\n" + "b" * 30, "c" * 30, "d" * 100]


GUTENBERG_PLAY = """\ufeffThe Project Gutenberg EBook of The Tiny Play, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost. You may copy it,
give it away or re-use it under the terms of the Project Gutenberg License.

*** START OF THIS PROJECT GUTENBERG EBOOK THE TINY PLAY ***

THE TINY PLAY

Dramatis Personae

HERO, a man.
VILLAIN, another.

ACT I.

Scene I. A room.

HERO.
To be brief, or not to be brief.

VILLAIN.
Be brief.

ACT II.

Scene I. Another room.

HERO.
I was brief.

*** END OF THIS PROJECT GUTENBERG EBOOK THE TINY PLAY ***

***** This file should be named 1234.txt *****
Updated editions will replace the previous one. START: FULL LICENSE
THE FULL PROJECT GUTENBERG LICENSE
"""

OLD_STYLE = """The Project Gutenberg Etext of Sonnets
**This is a COPYRIGHTED Project Gutenberg Etext, Details Below**
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

From fairest creatures we desire increase.

End of Project Gutenberg Etext of Sonnets
"""


def test_strip_gutenberg_keeps_only_the_work():
    body = strip_gutenberg(GUTENBERG_PLAY)
    assert body.startswith("THE TINY PLAY")
    assert body.endswith("I was brief.")
    assert "gutenberg" not in body.lower() and "***" not in body
    assert strip_gutenberg(OLD_STYLE) == "From fairest creatures we desire increase."
    assert strip_gutenberg("\nNo markers here.\n") == "No markers here."


def test_shakespeare_documents_never_mix_acts():
    docs = shakespeare_documents(GUTENBERG_PLAY, max_chars=120)
    assert docs[0].startswith("THE TINY PLAY\n\nDramatis Personae")  # front matter goes with act I
    assert all(not ("ACT I." in doc and "ACT II." in doc) for doc in docs)
    assert any(doc.startswith("ACT II.") for doc in docs)
    assert all(len(doc) <= 120 for doc in docs)
    assert not any("gutenberg" in doc.lower() for doc in docs)
    assert len(shakespeare_documents(GUTENBERG_PLAY)) == 2  # one per act at the default size


ABBREVIATIONS = [
    f"{'123'[i % 3] if i % 4 == 0 else ''}B{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(66)
]


def bible_data(lines: list[str]) -> bytes:
    """A one-block bible.data holding `lines`, as literal LZW codes."""
    text = ("Holy Bible, test edition.\n" + "\n".join(lines) + "\n").encode()
    value = bits = 0
    for i, byte in enumerate(text):
        value |= byte << bits
        bits += 9 if i < 256 else 10 if i < 768 else 11 if i < 1792 else 12
    block = value.to_bytes((bits + 7) // 8, "little")
    header = b"EC02Compressed Data File".ljust(0x50, b"\0") + struct.pack(">III", 0, len(text), 1)
    start = len(header) + 8
    return header + struct.pack(">II", start, start + len(block)) + block


def test_kjv_documents_one_paragraph_per_chapter_and_books_by_name():
    lines = []
    for abbreviation in ABBREVIATIONS:
        lines += [
            f"{abbreviation}1:1 First verse.",
            f"{abbreviation}1:2 Second verse.",
            f"{abbreviation}2:1 Next.",
        ]
    docs = kjv_documents(bible_data(lines))
    assert len(docs) == 66  # no document spans two books
    assert docs[0] == "Genesis 1\n1 First verse.\n2 Second verse.\n\nGenesis 2\n1 Next."
    assert docs[-1].startswith("Revelation 1\n")
    assert docs[21].startswith("Song of Solomon 1")
    assert len(KJV_BOOKS) == 66


def test_kjv_documents_errors():
    with pytest.raises(CorpusError, match="holds 2 books, expected the 66"):
        kjv_documents(bible_data(["Ge1:1 a.", "Exo1:1 b."]))
    with pytest.raises(CorpusError, match=r"line 3 is not a verse"):
        kjv_documents(bible_data(["Ge1:1 a.", "stray text"]))
    with pytest.raises(CorpusError, match=r"bible\.data: not a Bible Retrieval System data file"):
        kjv_documents(b"not it")


NBSP = "\N{NO-BREAK SPACE}"
JARGON = f"""                                The Jargon File

   Table of Contents

   Welcome to the Jargon File

                          Welcome to the Jargon File

   This is the Jargon File, a comprehensive compendium of hacker slang.

                             Part{NBSP}I.{NBSP}Introduction

   Table of Contents

   1. Hacker Slang and Hacker Culture

Chapter 1. Hacker Slang and Hacker Culture

   This document is a collection of slang terms.

                          Part{NBSP}II.{NBSP}The Jargon Lexicon

   Glossary

   0

   (TM)

  0

   (TM)

   :(TM): //

   [Usenet] ASCII rendition of the trademark sign.

  A

   abbrev

   ACK

   :abbrev: /@-breev'/, abbrev.

   Common abbreviation for {{abbreviation}}.

   :ACK: /ak/, interj.

   1. [common; from the ASCII mnemonic] Acknowledge.

        (__)
  / | 666 ||
 *  ||----||

   2. An acknowledgement.

                             Part{NBSP}III.{NBSP}Appendices

   Table of Contents

   A. Hacker Folklore

Appendix A. Hacker Folklore

   Table of Contents

   The Meaning of 'Hack'

   This appendix contains several legends.

The Meaning of 'Hack'

   The word hack has only one meaning.
"""


def test_jargon_documents_entries_grouped_per_letter_without_indexes():
    docs = jargon_documents(JARGON)
    text = "\n\n".join(docs)
    assert docs[0].startswith("Welcome to the Jargon File\n\nThis is the Jargon File")
    assert "Table of Contents" not in text
    assert "1. Hacker Slang and Hacker Culture" not in text.splitlines()  # a table-of-contents line
    assert "Chapter 1. Hacker Slang and Hacker Culture" in text  # the heading itself stays
    assert "(TM): //\n\n[Usenet] ASCII rendition" in text
    letter_a = next(doc for doc in docs if doc.startswith("abbrev:"))
    assert letter_a.startswith("abbrev: /@-breev'/, abbrev.\n\nCommon abbreviation for {abbreviation}.")
    assert (
        "       (__)\n / | 666 ||\n*  ||----||" in letter_a
    )  # ASCII art inside an entry, relative indent kept
    assert "\nabbrev\n" not in "\n" + text + "\n" and "\nACK\n" not in text  # the headword index is gone
    assert docs[-1].startswith(
        "Part III. Appendices\n\nAppendix A. Hacker Folklore\n\nThis appendix contains"
    )
    assert docs[-1].endswith("The word hack has only one meaning.")
    assert NBSP not in text


def test_jargon_documents_notice_a_changed_layout():
    with pytest.raises(CorpusError, match=r"cannot find the heading 'Part II\. The Jargon Lexicon'"):
        jargon_documents(JARGON.replace("The Jargon Lexicon", "The Lexicon"))
    without_entries = re.sub(r"(?m)^   :", "   ", JARGON)
    with pytest.raises(CorpusError, match="no lexicon entries"):
        jargon_documents(without_entries)


CHATTERBOT_YML = """categories:
- tests
conversations:
- - Hello
  - Hi there!
- - What is 2 plus 2?
  - Four.
  - And 3 plus 3?
- - A dialog whose answer is a number
  - 42
- - A question
  - ''
- - First
  - Second
  - null
  - Fourth
- 'In a game of bingo, which number is two little ducks? - 22'
- - "  Spaces around  "
  - "  are trimmed  "
  - ask again
  - answered again
"""


def test_chatterbot_conversations():
    conversations, dropped = chatterbot_conversations(CHATTERBOT_YML, "tests.yml")
    assert [[m["content"] for m in c["messages"]] for c in conversations] == [
        ["Hello", "Hi there!"],
        ["What is 2 plus 2?", "Four."],  # the trailing user turn is dropped
        ["First", "Second"],  # cut at the non-string turn
        ["Spaces around", "are trimmed", "ask again", "answered again"],
    ]
    assert dropped == 3  # the numeric answer, the empty answer, the bare string
    for conversation in conversations:
        assert conversation_problem(conversation) is None
        assert [m["role"] for m in conversation["messages"]][:2] == ["user", "assistant"]


def test_chatterbot_errors_name_the_file():
    with pytest.raises(CorpusError, match=r"^food\.yml: not valid YAML"):
        chatterbot_conversations("conversations: [unclosed", "food.yml")
    with pytest.raises(CorpusError, match=r"^food\.yml: expected a YAML mapping with a 'conversations' list"):
        chatterbot_conversations("categories: [food]\n", "food.yml")
