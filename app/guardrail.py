"""A prompt-injection / jailbreak screen for chat requests: rule checks plus a trained classifier.

`Guardrail.check(text)` returns a `Decision`:
- `label`: "injection" when a rule matches or the classifier's probability of injection reaches
  `threshold`, else "benign";
- `score`: the classifier's probability of injection (0..1), reported even when a rule decided;
- `rule`: the name of the first rule that matched, or None;
- `action`: "allow" for benign text; for an injection "block" in mode "block", "flag" in mode "flag"
  (flag mode never blocks: the request goes through and the caller logs and counts it).

The rules are regular expressions for the classic patterns (override the instructions, reveal the system
prompt, "developer mode"/DAN personas, chat-template tokens typed as text); the classifier is a TF-IDF +
logistic regression pipeline trained by the learning track (`nanochat classify train --dataset guardrail`,
tracks/classify/) on the hand-written set in `tracks/classify/data/guardrail.jsonl`, shipped in
`models/guardrail/<version>/` and loaded through the registry's read side (app/classifiers.py).

It is a screen, not a proof: a few hundred examples cannot cover the attacks people invent, and a
paraphrase can pass. Use it to catch the common cases and to measure how often they come.
It deliberately knows nothing about HTTP, metrics or logging (the service decides what to do with a
Decision), nor about training: its evaluation on labeled texts is `tracks.classify.guardrail`.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app import classifiers
from nanochat.tokenizer import SPECIAL_TOKENS

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "guardrail"
MODES = ("block", "flag")
DEFAULT_THRESHOLD = 0.6  # on the held-out split: ~9 in 10 injections caught, ~1 in 20 benign texts stopped
INJECTION, BENIGN = "injection", "benign"
MAX_CHARS = 100_000  # longer texts are screened by rules in full, by the classifier on the first part

_CHAT_TOKENS = [re.escape(t) for t in SPECIAL_TOKENS] + [
    r"<\|im_start\|>",
    r"<\|im_end\|>",
    r"<\|endoftext\|>",
]
# (name, alternatives): the first rule with a matching alternative names the Decision. Case-insensitive.
_WHO = r"(system|hidden|initial|original|secret|internal)"
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "override_instructions",
        (
            r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(previous|prior|above|earlier|preceding|"
            r"all|any|your|these|system)\b[^.\n]{0,30}\b(instructions?|prompts?|rules|directions|guidelines|"
            r"directives|constraints|programming)\b",
            r"\b(ignore|disregard|forget)\s+(the\s+)?(instructions?|rules|prompt)\s+"
            r"(above|before|you were given|given to you)\b",
        ),
    ),
    (
        "reveal_system_prompt",
        (
            r"\b(reveal|show|print|repeat|display|output|leak|dump|tell me|give me|quote|copy)\b[^.\n]{0,40}"
            rf"\b(your|the)\s+{_WHO}\s+(prompt|instructions?|message)",
            rf"\bwhat\s+(is|are|was|were)\s+your\s+{_WHO}\s+(prompt|instructions?|message|rules)",
        ),
    ),
    (
        "jailbreak_persona",
        (
            r"\byou\s+are\s+(now\s+)?(an?\s+)?(jailbroken|unfiltered|unrestricted|uncensored|(?-i:DAN)\b|"
            r"in\s+(developer|god|jailbreak|unrestricted)\s+mode)",
            r"\b(you|act as|pretend)\b[^.\n]{0,40}\bdo anything now\b",
            r"\b(jailbreak|god)\s+mode\b",
        ),
    ),
    (
        "no_restrictions",
        (
            r"\b(respond|answer|reply|act|behave|speak|talk|write|pretend)\w*\b[^.\n]{0,30}\bwithout\s+"
            r"(any\s+)?(restrictions|filters|censorship|limitations|guidelines|rules|ethics)\b",
            r"\bno\s+longer\s+bound\s+by\b",
        ),
    ),
    ("chat_template_tokens", tuple(_CHAT_TOKENS)),
    (
        "fake_role_header",
        (
            r"(^|\n)\s*(#{1,3}\s*)?(system|developer)\s*(prompt|message|override)?\s*:\s*"
            r"(you|ignore|new|from now)",
        ),
    ),
)
_COMPILED = tuple((name, re.compile("|".join(alternatives), re.IGNORECASE)) for name, alternatives in RULES)


# the rules above that screen documents too (retrieved chunks, tool results): not `chat_template_tokens`,
# since a document's text is encoded as plain text (it can never become a special token) and documentation
# about chat templates names them; plus rules for instructions a document addresses to whoever reads it
DOCUMENT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    *(rule for rule in RULES if rule[0] != "chat_template_tokens"),
    (
        "instructions_to_the_model",
        (
            r"\b(note|message|instructions?|attention|important)\s+(to|for)\s+(the\s+|any\s+)?(ai|assistant|"
            r"llm|language\s+model|model|chatbot|bot)s?\b",
            r"\bif\s+you\s+are\s+(an?\s+)?(ai|assistant|llm|language\s+model|chatbot|bot)\b",
            r"\b(ai|llm|assistant|chatbot)s?\s*(reading|processing|summari[sz]ing)\s+this\b",
            r"\bwhen\s+(you\s+)?(summari[sz]|answer|read|process)\w*\s+this\b[^.\n]{0,60}\b(you\s+must|always|"
            r"instead|do\s+not|don't)\b",
        ),
    ),
)
_DOCUMENT_COMPILED = tuple(
    (name, re.compile("|".join(alternatives), re.IGNORECASE)) for name, alternatives in DOCUMENT_RULES
)


class GuardrailError(ValueError):
    """A bad guardrail setting or input; the message says what to fix."""


@dataclass(frozen=True)
class Decision:
    label: str
    score: float
    rule: str | None
    action: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def match_rule(text: str) -> str | None:
    """The name of the first rule that matches `text`, or None."""
    for name, pattern in _COMPILED:
        if pattern.search(text):
            return name
    return None


def match_document_rule(text: str) -> str | None:
    """The first document rule a third party's text matches (a retrieved chunk, a tool's result): a likely
    indirect prompt injection; or None."""
    return next((name for name, pattern in _DOCUMENT_COMPILED if pattern.search(text)), None)


class Guardrail:
    """Screen texts with the rules and a fitted binary pipeline whose classes include "injection"."""

    def __init__(
        self, model: Any, mode: str = "block", threshold: float = DEFAULT_THRESHOLD, version: str = ""
    ) -> None:
        if mode not in MODES:
            raise GuardrailError(f"guardrail mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise GuardrailError(f"guardrail threshold must be a number between 0 and 1, got {threshold!r}")
        classes = [str(c) for c in getattr(model, "classes_", [])]
        if INJECTION not in classes:
            raise GuardrailError(
                f"the guardrail model's classes are {classes}; it must predict {INJECTION!r}"
            )
        self.model = model
        self.mode = mode
        self.threshold = float(threshold)
        self.version = version
        self._injection_column = classes.index(INJECTION)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] = DEFAULT_MODEL,
        mode: str = "block",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> Guardrail:
        """The guardrail from a registry folder (`models/guardrail` = its latest version)."""
        loaded = classifiers.load(path)
        return cls(loaded.model, mode, threshold, version=f"{loaded.metadata['name']}/{loaded.version}")

    def score(self, texts: list[str]) -> list[float]:
        """The classifier's probability of injection for each text."""
        probabilities = self.model.predict_proba([t[:MAX_CHARS] for t in texts])
        return [float(p[self._injection_column]) for p in probabilities]

    def check(self, text: str) -> Decision:
        if not isinstance(text, str):
            raise GuardrailError(f"the guardrail checks text (str), got {type(text).__name__}")
        if not text.strip():
            return Decision(BENIGN, 0.0, None, "allow")
        return self._decide(text, self.score([text])[0])

    def check_messages(self, messages: list[str]) -> Decision:
        """One decision for a conversation: the first message that is an injection decides, else the most
        suspicious benign one (its score)."""
        if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
            raise GuardrailError("check_messages expects a list of str")
        texts = [m for m in messages if m.strip()]
        if not texts:
            return Decision(BENIGN, 0.0, None, "allow")
        decisions = [self._decide(t, s) for t, s in zip(texts, self.score(texts), strict=True)]
        flagged = [d for d in decisions if d.label == INJECTION]
        return flagged[0] if flagged else max(decisions, key=lambda d: d.score)

    def check_documents(self, documents: list[tuple[str, str]]) -> tuple[str, Decision] | None:
        """The first of (field, text) pairs from third parties (tool results) that a document rule matches,
        with the decision on it (score 1: a rule is certain); None when none does."""
        for name, text in documents:
            rule = match_document_rule(text)
            if rule is not None:
                return name, Decision(INJECTION, 1.0, rule, "block" if self.mode == "block" else "flag")
        return None

    def _decide(self, text: str, score: float) -> Decision:
        rule = match_rule(text)
        if rule is None and score < self.threshold:
            return Decision(BENIGN, round(score, 4), None, "allow")
        return Decision(INJECTION, round(score, 4), rule, "block" if self.mode == "block" else "flag")
