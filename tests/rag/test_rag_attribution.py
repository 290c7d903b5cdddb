"""Post-hoc attribution (nanochat/rag/attribution.py): which sentences of a reply the sources support, the
[n] markers it adds, and the same result whether the reply comes whole or in pieces of any size."""

from __future__ import annotations

import pytest

from nanochat.rag.attribution import Attribution, Sources, content_words

RELEASE = (
    "To roll back a release, route all traffic to the previous revision with gcloud run services "
    "update-traffic --to-revisions."
)
CACHE = "Prefix caching keeps the KV cache of shared prompt prefixes, so a second turn skips its prefill."
SOURCES = Sources([RELEASE, CACHE])
ROUTE = "Route all traffic to the previous revision with update-traffic"
REPLY = (
    "Route all traffic to the previous revision with update-traffic. The weather is lovely today in Paris! "
    "Prefix caching skips the prefill of a second turn\nSee docs/rag.md, version 3.5, for more"
)


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def streamed(sources: Sources, reply: str, size: int, mark: bool = True) -> tuple[str, Attribution]:
    attribution = Attribution(sources, mark)
    return "".join(attribution.feed(p) for p in pieces(reply, size)) + attribution.finish(), attribution


def test_supported_sentences_get_their_source_before_the_punctuation() -> None:
    attribution = Attribution(SOURCES, mark=True)
    text = attribution.text(REPLY)
    assert text == (
        "Route all traffic to the previous revision with update-traffic [1]. The weather is lovely today in "
        "Paris! Prefix caching skips the prefill of a second turn [2]\nSee docs/rag.md, version 3.5, for more"
    )
    first, second = attribution.supports
    assert text[first.start : first.end] == ROUTE + " [1]"
    assert (first.sources, first.cited, first.scores[0]) == ((1,), (), 1.0)
    assert text[second.start : second.end] == "Prefix caching skips the prefill of a second turn [2]"
    assert second.sources == (2,)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_pieces_of_any_size_give_the_same_text_and_supports(size: int) -> None:
    whole = Attribution(SOURCES, mark=True)
    expected = whole.text(REPLY)
    text, attribution = streamed(SOURCES, REPLY, size)
    assert text == expected and attribution.supports == whole.supports


def test_without_mark_the_text_is_unchanged_and_supports_still_found() -> None:
    for size in (1, 5, 10_000):
        text, attribution = streamed(SOURCES, REPLY, size, mark=False)
        assert text == REPLY
        assert [s.sources for s in attribution.supports] == [(1,), (2,)]
        first = attribution.supports[0]
        assert REPLY[first.start : first.end] == ROUTE


def test_a_dot_inside_a_word_or_number_ends_no_sentence() -> None:
    """'docs/rag.md' and '3.5' stay in one sentence, even when the dot is the last character of a piece."""
    sources = Sources(["See docs/rag.md, version 3.5, for the pipeline and its diagram."])
    reply = "See docs/rag.md version 3.5 for the pipeline diagram"
    for size in range(1, len(reply) + 1):
        text, attribution = streamed(sources, reply, size)
        assert text == reply + " [1]", size
        assert len(attribution.supports) == 1


def test_a_reply_that_cites_keeps_its_markers_and_they_are_reported() -> None:
    reply = "Route all traffic to the previous revision [1]. Prefix caching skips the prefill [7]."
    attribution = Attribution(SOURCES, mark=True)
    assert attribution.text(reply) == reply  # cited sentences get nothing added
    assert [(s.cited, s.sources) for s in attribution.supports] == [((1,), (1,)), ((7,), (2,))]


def test_short_and_unsupported_sentences_are_left_alone() -> None:
    attribution = Attribution(SOURCES, mark=True)
    reply = "Yes. Cache it. The quick brown fox jumps over the lazy dog."
    assert attribution.text(reply) == reply and attribution.supports == []


def test_a_sentence_needs_half_its_content_words_in_one_source() -> None:
    sources = Sources(["alpha beta gamma delta"])
    assert sources.support("alpha beta zeta eta") == ((1,), (0.5,))
    assert sources.support("alpha zeta eta theta") == ((), ())
    both = Sources(["alpha beta gamma", "alpha beta gamma delta", "nothing here at all"])
    assert both.support("alpha beta gamma delta") == ((2, 1), (1.0, 0.75))  # best first, at most two


def test_content_words_drop_stop_words_case_and_punctuation() -> None:
    assert content_words("The Release, and THE rollback: it's done!") == {"release", "rollback"}


def test_a_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="min_overlap"):
        Sources(["x"], min_overlap=0)
