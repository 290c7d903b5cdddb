"""Constrained decoding: a continuation whose `SamplingParams.constraint` is set writes JSON that parses and
validates against a JSON schema (structured outputs), or, after a trigger token, a tool call's arguments.

Built on llguidance (chosen by measurement against xgrammar: bench/grammar_mask.py, docs/serving.md
"Structured outputs"). Here, and nowhere else:
- `check_schema`: a schema the library cannot compile is a `GrammarError` naming what is wrong (the API's
  400), before any engine sees it;
- `Grammars`: one per engine, over its tokenizer's vocabulary as llguidance wants it (special tokens are
  not text: no grammar ever allows one, so neither the calculator nor an end of turn can start inside the
  JSON); compiled grammars cached by schema text (bounded LRU), one matcher per continuation (a copy of the
  cached one), and the batched mask of the rows that have one (`allowed`), filled by llguidance's parallel
  executor into one bitmask;
- `RowConstraint`: one continuation's state: free until its trigger token (if any), then constrained, then
  done when its end token comes (once the JSON is complete, the only token allowed).

It does not sample or apply the stop rules: `nanochat.batching` calls `allowed` before it samples and
`RowConstraint.advance` with every token a continuation takes. Rows without a constraint cost nothing.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

import llguidance
import llguidance.torch
import numpy as np
import torch

from nanochat.backend import FINISH_STOP, Constraint, EngineError

logger = logging.getLogger(__name__)

GRAMMAR_CACHE_SIZE = 256  # compiled grammars kept per engine (a schema's matcher is copied per continuation)
# Compact JSON: no whitespace between tokens, so a small model cannot wander off into blank lines.
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = '{"type":"object"}'  # json_object mode: any JSON object


class GrammarError(EngineError):
    """A schema the grammar library cannot compile; the message names the feature or the error."""


def canonical_schema(schema: dict[str, Any] | None) -> str:
    """The schema as `Constraint.schema` holds it: compact JSON text, keys in their order (the properties
    are written in it); None: any JSON object, "")."""
    if schema is None:
        return ""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)  # key order matters: properties


def _grammar(schema: str) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema or ANY_OBJECT, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise GrammarError(f"the schema is not a JSON object: {exc}") from None


def check_schema(schema: str) -> None:
    """Raise GrammarError unless llguidance compiles `schema` (canonical JSON text; "" = any object)."""
    error = llguidance.LLMatcher.validate_grammar(_grammar(schema))
    if error:
        raise GrammarError(f"unsupported JSON schema: {error.strip()}")


def _unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, words) int32 bitmask (bit j of word w: token 32 * w + j) -> (rows, vocab) bool."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab]).bool()


class RowConstraint:
    """One continuation's constraint state: free (until `trigger_token`), constrained, finished."""

    def __init__(self, constraint: Constraint, matcher: Any, end_token: int) -> None:
        self.constraint = constraint
        self.matcher = matcher
        self.end_token = end_token
        self.active = constraint.trigger_token is None  # the matcher decides the next token
        self.forcing = constraint.force_trigger and constraint.trigger_token is not None  # first token
        self.finished = False

    @property
    def masked(self) -> bool:
        """Whether the next token is masked (constrained, or the forced trigger)."""
        return (self.active or self.forcing) and not self.finished

    def advance(self, token: int) -> str | None:
        """Take the continuation's token; return the finish reason when it is the end token."""
        self.forcing = False
        if self.finished:
            return None
        if not self.active:
            self.active = token == self.constraint.trigger_token
            return None
        if token == self.end_token and self.matcher.is_accepting():
            self.finished = True
            return self.constraint.finish_reason
        if not self.matcher.consume_token(token):  # a token the mask refused: none can come, but if one did,
            # end this continuation rather than fail every generation in the batch
            logger.error("token %d broke a constraint (%s); the choice ends", token, self.matcher.get_error())
            self.finished = True
            return FINISH_STOP
        return None


class Grammars:
    """Compiled grammars and masks over one tokenizer's vocabulary (`vocabulary`: an llguidance
    LLTokenizer whose eos token is the engine's end of turn, `vocab_size`: the model's logits' width)."""

    def __init__(self, vocabulary: Any, vocab_size: int, eos_token: int) -> None:
        self.vocabulary = vocabulary
        self.vocab_size = vocab_size
        self.eos_token = eos_token
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._executor = llguidance.LLExecutor()
        self._words = (max(vocab_size, vocabulary.vocab_size) + 31) // 32

    @classmethod
    def for_tiktoken(cls, encoding: Any, vocab_size: int, eos_token: int) -> Grammars:
        from llguidance.tiktoken import lltokenizer_from_encoding

        return cls(lltokenizer_from_encoding(encoding, eos_token=eos_token), vocab_size, eos_token)

    @classmethod
    def for_transformers(cls, tokenizer: Any, vocab_size: int, eos_token: int) -> Grammars:
        import llguidance.hf

        return cls(llguidance.hf.from_tokenizer(tokenizer, eos_token=eos_token), vocab_size, eos_token)

    def matcher(self, schema: str) -> Any:
        """A fresh matcher for `schema` (compiled once, then copied); GrammarError if it cannot compile."""
        compiled = self._compiled.get(schema)
        if compiled is None:
            compiled = llguidance.LLMatcher(self.vocabulary, _grammar(schema), log_level=0)
            if compiled.is_error():
                raise GrammarError(f"unsupported JSON schema: {compiled.get_error().strip()}")
            self._compiled[schema] = compiled
            if len(self._compiled) > GRAMMAR_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(schema)
        return compiled.deep_copy()

    def row(self, constraint: Constraint) -> RowConstraint:
        """A new continuation's state (each of a generation's `n` has its own)."""
        end = self.eos_token if constraint.end_token is None else constraint.end_token
        return RowConstraint(constraint, self.matcher(constraint.schema), end)

    def allowed(self, rows: list[RowConstraint]) -> torch.Tensor:
        """(len(rows), vocab_size) bool: the tokens each (masked) row may take next, in one batched fill."""
        bitmask = torch.zeros(len(rows), self._words, dtype=torch.int32)
        active = [(r.matcher, i) for i, r in enumerate(rows) if not r.forcing]
        if active:
            llguidance.torch.fill_next_token_bitmask_par(self._executor, active, bitmask)
        allowed = _unpack(bitmask, self.vocab_size)
        for i, r in enumerate(rows):
            if r.forcing:
                allowed[i, r.constraint.trigger_token] = True
            elif r.end_token != self.eos_token:  # llguidance allows its eos once the JSON is complete
                allowed[i, r.end_token] = allowed[i, self.eos_token]
                allowed[i, self.eos_token] = False
        return allowed
