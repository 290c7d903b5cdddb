"""Turn a stream of token ids into a stream of text, safely.

A BPE token can end in the middle of a multi-byte UTF-8 character, so text is decoded from bytes with an
incremental decoder that holds back an incomplete character until the next token completes it. Stop strings
may be split over several tokens, so the stream also holds back any tail that could still become a stop
string, and ends the text just before the stop string that completes first (as if text arrived one
character at a time, so the result does not depend on how the text was tokenized). Special tokens produce
no text.

It knows nothing about models or sampling: `feed` takes a token id and returns the new text.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable


class TextStream:
    def __init__(
        self,
        token_bytes: Callable[[int], bytes],
        special_ids: Iterable[int] = (),
        stop: Iterable[str] = (),
    ) -> None:
        self._token_bytes = token_bytes
        self._special = frozenset(special_ids)
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text not yet emitted because it may start a stop string
        self.stopped = False  # a stop string was found; the stream emits nothing more

    def feed(self, token: int) -> str:
        """Text that became final with this token ('' while a character or stop-string prefix is pending)."""
        if self.stopped or token in self._special:
            return ""
        return self._release(self._decoder.decode(self._token_bytes(token)))

    def finish(self) -> str:
        """Flush everything held back (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        text = self._release(self._decoder.decode(b"", final=True), final=True)
        return text

    def _release(self, new_text: str, final: bool = False) -> str:
        text = self._held + new_text
        self._held = ""
        if not self._stop:
            return text
        # the stop string that completes first wins (the longest, if several end at the same character)
        matches = [(i + len(s), i) for s in self._stop if (i := text.find(s)) >= 0]
        if matches:
            self.stopped = True
            return text[: min(matches)[1]]
        if final:
            return text
        keep = self._longest_stop_prefix_suffix(text)
        if keep:
            self._held = text[-keep:]
            return text[:-keep]
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
