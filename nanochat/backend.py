"""The contract between a generation backend and what drives it (the service's scheduler, the CLI).

`GenerationBackend` is what a scheduler calls: `begin` reserves rows for a prompt and its `n`
continuations, `prefill` runs the prompt a chunk at a time, `decode_step` advances every decoding row by one
token in one batched forward, `cancel` and `reset` free rows. `ChatTokenizer` is what the service asks of
the backend's tokenizer: render a chat to prompt ids, encode, decode, special tokens, vocabulary size.
nanochat's `Engine` and the Hugging Face `HFEngine` both implement it, through the one row lifecycle in
`nanochat.batching`; callers import only this module and never look inside an engine.

Also here, because they cross the contract: `SamplingParams` (how to sample one request), `Generation`
(one prompt and its continuations, as `begin` returns it), `TokenEvent` (one new token of one
continuation) and the errors. This module runs no model code.

A generation's states, in order (a scheduler's queue is where it waits before `begin`):

    begin ──> PREFILLING ──(last prompt chunk)──> DECODING ──(every continuation finished)──> DONE
                  └──────────────── cancel / reset (from any state) ──────────────────────────┘
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from nanochat.detokenize import TextStream
from nanochat.memory import MemoryPlan
from nanochat.prefix_cache import PrefixCacheStats

if TYPE_CHECKING:
    from nanochat.constrain import RowConstraint

FINISH_STOP = "stop"  # an end-of-sequence token, a stop token id or a stop string
FINISH_LENGTH = "length"  # max_tokens, or the context is full
MAX_TOP_K = 1_000_000
MAX_LOGPROBS = 20  # alternatives per token


@dataclass(frozen=True)
class Constraint:
    """What a continuation must write (`nanochat.constrain`): JSON valid against `schema`, from its first
    token or from `trigger_token` on, ended by `end_token`."""

    schema: str = ""  # a JSON schema as canonical JSON text (constrain.canonical_schema); "": any JSON object
    trigger_token: int | None = None  # None: constrained from the first token; else free until it samples
    # this token (kept), then constrained
    force_trigger: bool = False  # the first generated token is trigger_token (tool_choice required)
    end_token: int | None = None  # once the JSON is complete, the only allowed token; None: the model's end
    # of turn (the engine's first eos: <|assistant_end|>)
    finish_reason: str = FINISH_STOP  # the finish_reason when end_token ends the continuation

    def token_ids(self) -> tuple[int, ...]:
        return tuple(t for t in (self.trigger_token, self.end_token) if t is not None)


class EngineError(ValueError):
    """A request the engine cannot run as asked (bad parameters, prompt too long, no free rows)."""


class CapacityError(EngineError):
    """No room for this request right now (rows taken, or a prefill already in progress)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request. temperature 0 is greedy; seed None draws a fresh random seed."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    tools: bool = True  # run the calculator tool on <|python_start|> ... <|python_end|> (nanochat's engine)
    ignore_eos: bool = False  # keep going past the end-of-sequence tokens (benchmarks)
    # OpenAI's penalties, over the tokens this choice generated so far: logit -= frequency * count + presence
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM/HF: a token seen in the prompt or the output has its logit divided (> 0) or multiplied (< 0) by it
    repetition_penalty: float = 1.0
    min_p: float = 0.0  # keep only tokens with probability >= min_p * the likeliest token's
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), OpenAI's logit_bias
    # nanochat's n: one first token for all n choices, then one generator for them all (nanochat's Engine,
    # token for token). Otherwise each choice samples its own first token with its own generator (seed + i).
    shared_first_token: bool = False
    logprobs: int | None = None  # each token's logprob and its `logprobs` likeliest alternatives; None: off
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (Generation.prompt_logprobs)
    constraint: Constraint | None = None  # JSON only (structured outputs, tool calls): nanochat.constrain

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise EngineError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 100.0:
            raise EngineError(f"temperature must be between 0 and 100, got {self.temperature!r}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and 1 <= self.top_k <= MAX_TOP_K):
            raise EngineError(f"top_k must be a positive integer, got {self.top_k!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise EngineError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise EngineError(f"n must be an integer >= 1, got {self.n!r}")
        if any(not isinstance(s, str) for s in self.stop):
            raise EngineError("stop must be a list of strings")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= float(getattr(self, name)) <= 2.0:
                raise EngineError(f"{name} must be between -2 and 2, got {getattr(self, name)!r}")
        if not 0.0 < float(self.repetition_penalty) <= 2.0:
            raise EngineError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty!r}")
        if not 0.0 <= float(self.min_p) <= 1.0:
            raise EngineError(f"min_p must be between 0 and 1, got {self.min_p!r}")
        for token, bias in self.logit_bias:
            if not (isinstance(token, int) and token >= 0 and -100.0 <= float(bias) <= 100.0):
                raise EngineError(f"logit_bias maps token ids >= 0 to -100..100, got {token!r}: {bias!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS):
                raise EngineError(f"{name} must be an integer in [0, {MAX_LOGPROBS}], got {value!r}")
        c = self.constraint
        if c is not None and c.force_trigger and c.trigger_token is None:
            raise EngineError("constraint.force_trigger needs a trigger_token")

    @property
    def adjusts_logits(self) -> bool:
        """Whether a penalty or a logit bias changes this request's logits before sampling."""
        penalized = self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
        return bool(penalized or self.logit_bias)

    def token_ids(self) -> tuple[int, ...]:
        """The token ids the parameters name (stop_token_ids, logit_bias): each must be in the vocabulary."""
        constrained = self.constraint.token_ids() if self.constraint is not None else ()
        return self.stop_token_ids + tuple(token for token, _ in self.logit_bias) + constrained


class GenerationState(enum.Enum):
    PREFILLING = "prefilling"
    DECODING = "decoding"
    DONE = "done"


@dataclass(eq=False)
class Continuation:
    """One of a generation's `n` continuations, decoding in one row of the engine's batch."""

    generation: Generation
    index: int
    text: TextStream
    row: int = -1
    last_token: int = -1
    finish_reason: str | None = None
    tokens: list[int] = field(default_factory=list)  # every token, also after finishing (nanochat parity)
    masks: list[int] = field(default_factory=list)  # 1 sampled, 0 forced by the tool
    forced: deque[int] = field(default_factory=deque)
    in_python: bool = False
    python_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None  # its own sampler's (None: the generation's, nanochat's n)
    constraint: RowConstraint | None = None  # its constraint's state, with params.constraint

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class Generation:
    """A prompt and its continuations, as the engine runs them. Created by `begin`; read-only for callers."""

    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    continuations: list[Continuation] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the cache
    num_generated: int = 0  # decode steps taken (each yields one token per continuation)
    state: GenerationState = GenerationState.PREFILLING
    # with params.prompt_logprobs, once prefilled: (logprob, top (token, logprob) pairs) of prompt tokens 1...
    prompt_logprobs: list[tuple[float, tuple[tuple[int, float], ...]]] = field(default_factory=list)

    @property
    def prefill_remaining(self) -> int:
        return len(self.prompt_ids) - self.prefilled

    @property
    def done(self) -> bool:
        return self.state is GenerationState.DONE


@dataclass(frozen=True)
class TokenEvent:
    """One new token of one continuation. `text` is the newly final text (may be '').

    With `SamplingParams.logprobs` set: `logprob`, the token's log-probability under the model's raw
    distribution at that position (log-softmax of the logits, before temperature, top-k/p or any other
    processing; a token forced by the calculator tool gets its logprob there too), and `top_logprobs`,
    the `logprobs` likeliest (token, logprob) pairs, likeliest first. Otherwise None and ()."""

    generation: Generation
    index: int
    token: int
    forced: bool
    text: str
    finish_reason: str | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@runtime_checkable
class ChatTokenizer(Protocol):
    """The tokenizer side of a backend: what the service calls. User text never becomes special tokens."""

    def get_vocab_size(self) -> int: ...

    def get_special_tokens(self) -> dict[str, int]:
        """Special-token text -> id."""
        ...

    def get_bos_token_id(self) -> int | None:
        """None when the model has no beginning-of-sequence token."""
        ...

    def encode_special(self, name: str) -> int: ...

    def encode(
        self, text: str | list[str], prepend: int | str | None = None, append: int | str | None = None
    ) -> list[int] | list[list[int]]:
        """Plain text -> ids (a list of texts -> one list each); prepend/append: an id or a special token."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt ids for the assistant's answer to `messages` (ending with the user's turn), uncut."""
        ...


@runtime_checkable
class GenerationBackend(Protocol):
    """A batched generation engine with `max_batch` rows; see the module docstring. One thread drives it."""

    @property
    def tokenizer(self) -> ChatTokenizer: ...

    @property
    def max_batch(self) -> int:
        """Rows: the most continuations decoding (and being prefilled) at once."""
        ...

    @property
    def max_seq_len(self) -> int:
        """The context: prompt plus generated tokens of one continuation."""
        ...

    @property
    def memory(self) -> MemoryPlan:
        """What the weights and the KV cache take (the cache's most, where it is not preallocated)."""
        ...

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokens that end a continuation unless `SamplingParams.ignore_eos`."""
        ...

    @property
    def num_decoding(self) -> int:
        """Rows decoding now."""
        ...

    def free_rows(self) -> int: ...

    def prefix_cache_stats(self) -> PrefixCacheStats | None:
        """What the prefix cache holds and has done (`nanochat.prefix_cache`); None without one."""
        ...

    def can_begin(self, n: int = 1) -> bool:
        """Whether `begin` would find `n` free rows now (and no other prefill in progress)."""
        ...

    def begin(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Reserve rows and start the prefill; EngineError (CapacityError when only busy)."""
        ...

    def prefill(self, generation: Generation, max_tokens: int | None = None) -> list[TokenEvent]:
        """Prefill up to `max_tokens` more prompt tokens; [] until the prompt is done, then the first
        token's events (the generation is DECODING, or DONE already)."""
        ...

    def decode_step(self) -> list[TokenEvent]:
        """One batched forward over every decoding row: the new token of each live continuation."""
        ...

    def cancel(self, generation: Generation) -> None:
        """Drop a generation in any state and free its rows."""
        ...

    def reset(self) -> None:
        """Forget every generation (after an error left the batch in an unknown state)."""
        ...

    def generate(
        self,
        tokens: Sequence[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
        **kwargs: Any,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """nanochat's simple interface on an idle engine: (token column, mask column) per step."""
        ...
