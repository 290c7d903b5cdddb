"""Post-hoc attribution: which sentences of a reply the retrieved sources support, and, if asked, `[n]`
markers added after them.

A model too small to cite reliably (the demo model) still gets an answer whose sentences point at their
sources; a model that cites gets its own markers kept and its sentences' support reported beside them. As
in grounding APIs that report "supports" (a span of the reply and the sources behind it), it is measured,
not generated: a sentence is supported by a source when at least `min_overlap` of its content words (lower
case, letters and digits, stop words left out) occur in that source, and it needs `min_words` of them to be
judged at all. Word overlap is cheap (microseconds a sentence), needs no model and is easy to explain; it
cannot tell a sentence that copies words with the meaning changed from a faithful one.

Streaming: `Attribution.feed` takes each piece of text as it is generated and returns what to send on. A
sentence ends at `.`, `!` or `?` followed by white space, or at a newline; its marker goes before the
punctuation ("... the previous revision [1]."). A `.`, `!` or `?` at the end of a piece is held back until
the next piece shows whether a space follows (so "docs/rag.md" or "3.5" do not end a sentence);
`finish` sends it on. The spans of `supports` are character offsets in the text sent, markers included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_OVERLAP = 0.5  # share of a sentence's content words found in a source for it to count as support
MIN_WORDS = 3  # content words a sentence needs to be judged at all ("Yes." is not attributed)
MOST_SOURCES = 2  # markers per sentence, best first
ENDINGS = ".!?"
WORD = re.compile(r"[^\W_]+")
MARKER = re.compile(r"\[(\d{1,3})\]")
_STOP_TEXT = """a about after again all also an and any are as at be because been before being but by can
could did do does doing done each for from had has have having he her here hers him his how i if in into is it
its just me more most my no nor not now of off on once only or other our out over own same she should so
some such than that the their them then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


def content_words(text: str) -> frozenset[str]:
    """The lower-cased words of `text` that carry meaning: not stop words, not single characters."""
    return frozenset(w for w in WORD.findall(text.lower()) if len(w) > 1 and w not in STOP_WORDS)


@dataclass(frozen=True)
class Support:
    """A sentence of the reply (characters `start`..`end` of the text sent) and the sources behind it."""

    start: int
    end: int
    sources: tuple[int, ...]  # source numbers (1-based, as cited), best first
    scores: tuple[float, ...]  # each one's share of the sentence's content words
    cited: tuple[int, ...]  # the numbers the reply itself wrote in this sentence ([n])


class Sources:
    """The retrieved texts, numbered from 1, and how well each supports a sentence."""

    def __init__(
        self,
        texts: Sequence[str],
        *,
        min_overlap: float = MIN_OVERLAP,
        min_words: int = MIN_WORDS,
        most: int = MOST_SOURCES,
    ) -> None:
        if not 0 < min_overlap <= 1:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
        self.words = [content_words(text) for text in texts]
        self.min_overlap, self.min_words, self.most = min_overlap, min_words, most

    def __len__(self) -> int:
        return len(self.words)

    def support(self, sentence: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The sources (numbers, best first, at most `most`) holding at least `min_overlap` of the
        sentence's content words, and those shares; nothing for a sentence of fewer than `min_words`."""
        words = content_words(MARKER.sub(" ", sentence))
        if len(words) < self.min_words:
            return (), ()
        shares = [(len(words & source) / len(words), n) for n, source in enumerate(self.words, start=1)]
        best = sorted((s for s in shares if s[0] >= self.min_overlap), key=lambda s: (-s[0], s[1]))
        best = best[: self.most]
        return tuple(n for _, n in best), tuple(round(share, 4) for share, _ in best)


@dataclass
class Attribution:
    """One reply's attribution, fed piece by piece (see the module docstring). `mark`: add `[n]` markers
    after supported sentences that cite nothing themselves."""

    sources: Sources
    mark: bool = False
    supports: list[Support] = field(default_factory=list)
    _sentence: str = ""  # the current sentence's text sent so far
    _start: int = 0  # where it starts in the text sent
    _sent: int = 0  # characters sent
    _held: str = ""  # a trailing '.', '!' or '?' not yet sent

    def feed(self, text: str) -> str:
        """The text to send for this piece: the piece, with markers where sentences ended, less a
        trailing sentence ending held back."""
        pending, out = self._held + text, []
        self._held = ""
        begin = 0
        for i, char in enumerate(pending):
            if char == "\n":
                out.append(self._end(pending[begin:i], "\n"))
                begin = i + 1
            elif char in ENDINGS:
                if i + 1 == len(pending):  # its next character is not here yet: hold it
                    out.append(self._add(pending[begin:i]))
                    self._held = char
                    return "".join(out)
                if pending[i + 1].isspace():
                    out.append(self._end(pending[begin:i], char))
                    begin = i + 1
        out.append(self._add(pending[begin:]))
        return "".join(out)

    def finish(self) -> str:
        """The rest to send at the end of the reply: its last sentence closed (and marked)."""
        held, self._held = self._held, ""
        return self._end("", held)

    def step(self, text: str, last: bool) -> str:
        """One piece of the reply as generated (`last`: the reply ends with it): what to send on."""
        return self.feed(text) + (self.finish() if last else "")

    def text(self, reply: str) -> str:
        """A whole reply at once: `reply` as sent (with markers when `mark`)."""
        return self.step(reply, last=True)

    def _add(self, piece: str) -> str:
        self._sentence += piece
        self._sent += len(piece)
        return piece

    def _end(self, piece: str, ending: str) -> str:
        """Close the current sentence with `piece` and `ending` (its punctuation or newline, or "")."""
        sentence = self._sentence + piece
        cited = tuple(int(n) for n in MARKER.findall(sentence))
        sources, scores = self.sources.support(sentence)
        marker = ""
        if self.mark and sources and not cited:
            marker = (" " if sentence and not sentence[-1].isspace() else "") + "".join(
                f"[{n}]" for n in sources
            )
        stripped = len(sentence) - len(sentence.lstrip())
        if sources or cited:
            start = self._start + stripped
            end = self._start + (len(sentence) + len(marker) if marker else len(sentence.rstrip()))
            self.supports.append(Support(start, end, sources, scores, cited))
        out = piece + marker + ending
        self._sent += len(out)
        self._sentence, self._start = "", self._sent
        return out
