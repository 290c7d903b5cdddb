"""Streaming detokenization: whole characters only, stop strings found across token boundaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat.detokenize import TextStream


def stream_of(tokenizer, stop=()):
    special = tokenizer.get_special_tokens().values()
    return TextStream(tokenizer.id_to_token_bytes, special, stop)


def pieces(tokenizer, ids, stop=()):
    s = stream_of(tokenizer, stop)
    out = [s.feed(t) for t in ids]
    out.append(s.finish())
    return out, s


@settings(max_examples=150, deadline=None)
@given(text=st.text(min_size=0, max_size=60))
def test_stream_reassembles_any_text_without_broken_characters(small_tokenizer, text):
    ids = small_tokenizer.encode(text)
    out, _ = pieces(small_tokenizer, ids)
    assert "".join(out) == text
    for piece in out:  # no piece ends in half a character
        piece.encode("utf-8")
        assert "\ufffd" not in piece or "\ufffd" in text


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet="abc xyz€é", max_size=40),
    stop=st.lists(st.text(alphabet="abc€", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_stop_strings_cut_the_text_at_the_first_match(small_tokenizer, text, stop):
    """Generation stops when a stop string completes: the first to complete, character by character."""
    out, s = pieces(small_tokenizer, small_tokenizer.encode(text), stop)
    expected, stopped = text, False
    for end in range(1, len(text) + 1):
        ending = [x for x in stop if text[:end].endswith(x)]
        if ending:
            expected, stopped = text[: end - max(map(len, ending))], True
            break
    assert "".join(out) == expected
    assert s.stopped == stopped


def test_multibyte_character_is_held_until_complete(small_tokenizer):
    s = stream_of(small_tokenizer)
    crab = list("🦀".encode())
    # feed the four bytes as single-byte tokens (ids 0..255 are the byte values)
    assert [s.feed(b) for b in crab] == ["", "", "", "🦀"]


def test_incomplete_character_becomes_replacement_at_finish(small_tokenizer):
    s = stream_of(small_tokenizer)
    assert s.feed(0xE2) == ""
    assert s.finish() == "\ufffd"


def test_special_tokens_produce_no_text(small_tokenizer):
    s = stream_of(small_tokenizer)
    assert s.feed(small_tokenizer.encode_special("<|assistant_end|>")) == ""
    assert s.feed(ord("a")) == "a"


def test_possible_stop_prefix_is_held_then_released(small_tokenizer):
    s = stream_of(small_tokenizer, stop=("END",))
    assert s.feed(ord("x")) == "x"
    assert s.feed(ord("E")) == ""  # could be the start of END
    assert s.feed(ord("N")) == ""
    assert s.feed(ord("d")) == "ENd"  # it was not
    assert s.feed(ord("E")) == ""
    assert s.finish() == "E"  # end of stream: nothing to wait for
