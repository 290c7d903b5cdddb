"""The inference engine: KV-cached generation over many independent sequences at once.

A `Request` is one prompt and its `n` continuations. The engine prefills a request (in chunks, so a long
prompt can be interleaved with decoding), samples its first token, then gives each continuation a row of
the KV cache. `decode_step` runs one batched forward over every decoding row, whatever its length, and
samples each request with its own parameters and random generator. Requests join and leave between steps;
a request's tokens do not depend on what else is in the batch.

It also runs nanochat's calculator tool: tokens between <|python_start|> and <|python_end|> are evaluated
(safely, by `calculator.evaluate`) and the result is forced into the stream as
<|output_start|> result <|output_end|>.

Rows [0, num_decoding) of the cache hold decoding sequences, contiguously: when a request leaves, the last
rows move into the holes. The request being prefilled (one at a time) sits in the row just after them.

The engine runs on one thread and knows nothing about HTTP; `generate` is nanochat's simple interface.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from nanochat.calculator import evaluate as calculator_evaluate
from nanochat.detokenize import TextStream
from nanochat.gpt import GPT
from nanochat.kv_cache import KVCache
from nanochat.tokenizer import Tokenizer

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
MAX_TOP_K = 1_000_000
MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (logits/T would overflow to inf, then NaN)


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
    tools: bool = True  # run the calculator tool on <|python_start|> ... <|python_end|>
    ignore_eos: bool = False  # keep going past <|assistant_end|> / <|bos|> (benchmarks)

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


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Sample one token per row of (batch, vocab) logits; returns (batch,) ids.

    Matches nanochat: greedy at temperature 0 (and below MIN_TEMPERATURE); with top_k, softmax over the k
    largest logits only.
    top_p (nucleus) then keeps the smallest set of tokens whose probability reaches p.
    """
    if temperature < MIN_TEMPERATURE:  # 0 is greedy; so is anything small enough to overflow logits/T
        return torch.argmax(logits, dim=-1)
    logits = logits.float()
    indices = None
    if top_k is not None and top_k < logits.size(-1):
        logits, indices = torch.topk(logits, top_k, dim=-1)  # sorted, largest first
    logits = logits / temperature
    if top_p < 1.0:
        if indices is None:
            logits, indices = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
        drop = before >= top_p
        drop[:, 0] = False  # the most likely token always stays (a tiny top_p rounds to 0 in fp32)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    choice = torch.multinomial(probs, num_samples=1, generator=generator)
    if indices is not None:
        choice = indices.gather(1, choice)
    return choice[:, 0]


@dataclass(eq=False)
class Continuation:
    """One of a request's `n` continuations, decoding in one cache row."""

    request: Request
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

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class Request:
    """A prompt and its continuations. Created by `Engine.begin`; read-only for callers."""

    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    continuations: list[Continuation] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the cache
    num_generated: int = 0  # decode steps taken (each yields one token per continuation)
    done: bool = False

    @property
    def prefill_remaining(self) -> int:
        return len(self.prompt_ids) - self.prefilled


@dataclass(frozen=True)
class TokenEvent:
    """One new token of one continuation. `text` is the newly final text (may be '')."""

    request: Request
    index: int
    token: int
    forced: bool
    text: str
    finish_reason: str | None


class RowPool:
    """What every engine behind the scheduler shares (this one and nanochat.hf_engine.HFEngine): `max_batch`
    rows, taken by the continuations in `decoding` plus the `n` of the request being prefilled, and the
    checks and bookkeeping that start a request, and a decode step's sampling and accounting. Subclasses set
    `max_batch`, `max_seq_len`, `device`, `decoding`, `prefilling`, and give each continuation its text
    stream (`_text_stream`), take a token (`_accept`) and free a finished request's rows (`_release`)."""

    max_batch: int
    max_seq_len: int
    device: torch.device
    decoding: list[Continuation]
    prefilling: Request | None

    @property
    def num_decoding(self) -> int:
        return len(self.decoding)

    def free_rows(self) -> int:
        reserved = self.prefilling.params.n if self.prefilling else 0
        return self.max_batch - len(self.decoding) - reserved

    def can_begin(self, n: int = 1) -> bool:
        return self.prefilling is None and self.free_rows() >= n

    def _new_request(self, prompt_ids: Sequence[int], params: SamplingParams, vocab_size: int) -> Request:
        """A checked request with its continuations and seeded generator (EngineError / CapacityError);
        the caller makes it the one being prefilled."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) > self.max_seq_len:
            raise EngineError(f"the prompt has {len(prompt)} tokens; the context is {self.max_seq_len}")
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise EngineError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
        if params.n > self.max_batch:
            raise EngineError(f"n={params.n} is more than the engine's batch of {self.max_batch}")
        if not self.can_begin(params.n):
            raise CapacityError("no free rows for this request now")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        request = Request(prompt, params, torch.Generator(device=self.device).manual_seed(seed))
        for i in range(params.n):
            request.continuations.append(Continuation(request, i, self._text_stream(params)))
        return request

    def _step_rows(self, rows: list[Continuation], logits: torch.Tensor) -> list[TokenEvent]:
        """One decode step's bookkeeping, given `logits[i]` for `rows[i]`: greedy rows in one argmax, the
        others with their request's sampler and generator; then each continuation takes its token, and
        requests whose continuations have all finished leave. Returns the events of live continuations."""
        sampled: dict[int, int] = {}
        greedy = [i for i, c in enumerate(rows) if c.request.params.temperature == 0.0]
        if greedy:
            sampled.update(zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist(), strict=True))
        requests = list(dict.fromkeys(c.request for c in rows))
        sampling = [r for r in requests if r.params.temperature != 0.0]
        index = {c: i for i, c in enumerate(rows)} if sampling else {}
        for request in sampling:
            group = [index[c] for c in request.continuations]
            sampled.update(zip(group, self._sample(request, logits[group]).tolist(), strict=True))
        events = [self._accept(c, sampled[i]) for i, c in enumerate(rows)]
        for request in requests:
            self._finish_step(request)
        return [e for e in events if e is not None]

    def _sample(self, request: Request, logits: torch.Tensor) -> torch.Tensor:
        p = request.params
        return sample_next_token(logits, request.generator, p.temperature, p.top_k, p.top_p)

    def _finish_step(self, request: Request) -> None:
        """Count the step; free the request's rows once every continuation has finished."""
        request.num_generated += 1
        if all(c.finished for c in request.continuations):
            self._release(request)
            request.done = True

    def _text_stream(self, params: SamplingParams):
        raise NotImplementedError

    def _accept(self, cont: Continuation, sampled: int) -> TokenEvent | None:
        raise NotImplementedError

    def _release(self, request: Request) -> None:
        raise NotImplementedError


class Engine(RowPool):
    """Generation with a row-pooled KV cache; see the module docstring."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_batch: int = 16,
        max_seq_len: int | None = None,
        prefill_chunk: int = 512,
    ) -> None:
        config = model.config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or config.sequence_len, model.rotary_seq_len)
        self.prefill_chunk = prefill_chunk
        param = next(model.parameters())
        self.device = param.device
        # one extra row holds the request being prefilled
        self.cache = KVCache(
            config.n_layer,
            config.n_kv_head,
            config.head_dim,
            max_batch + 1,
            self.max_seq_len,
            dtype=param.dtype,
            device=self.device,
        )
        self.decoding: list[Continuation] = []  # decoding[row] lives in cache row `row`
        self.prefilling: Request | None = None
        special = tokenizer.get_special_tokens()
        self._special_ids = frozenset(special.values())
        self._python_start = special["<|python_start|>"]
        self._python_end = special["<|python_end|>"]
        self._output_start = special["<|output_start|>"]
        self._output_end = special["<|output_end|>"]
        self._default_stop_ids = frozenset({special["<|assistant_end|>"], tokenizer.get_bos_token_id()})

    # ---- request lifecycle ----------------------------------------------------------------------------
    def begin(self, prompt_ids: Sequence[int], params: SamplingParams) -> Request:
        """Reserve rows for a request and start its prefill. Raises EngineError / CapacityError."""
        request = self._new_request(prompt_ids, params, self.model.config.vocab_size)
        self.prefilling = request
        self.cache.reset_row(self._prefill_row)
        return request

    def _text_stream(self, params: SamplingParams) -> TextStream:
        return TextStream(self.tokenizer.id_to_token_bytes, self._special_ids, params.stop)

    @property
    def _prefill_row(self) -> int:
        return len(self.decoding)

    @torch.inference_mode()
    def prefill(self, request: Request, max_tokens: int | None = None) -> list[TokenEvent]:
        """Prefill up to `max_tokens` (default: the engine's chunk) more prompt tokens.

        Returns [] until the prompt is complete; then samples the first token (shared by all n
        continuations, as nanochat does), moves the request into decoding rows and returns its events.
        """
        if request is not self.prefilling:
            raise EngineError("this request is not the one being prefilled")
        chunk = min(max_tokens or self.prefill_chunk, request.prefill_remaining)
        ids = request.prompt_ids[request.prefilled : request.prefilled + chunk]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(idx, kv_cache=self.cache, start_row=self._prefill_row, last_only=True)
        request.prefilled += chunk
        if request.prefill_remaining:
            return []
        first = int(self._sample(request, logits[:, -1, :])[0])
        row = self._prefill_row
        self.prefilling = None
        for cont in request.continuations:
            cont.row = len(self.decoding)
            if cont.row != row:
                self.cache.copy_row(row, cont.row)
            self.decoding.append(cont)
        events = [self._accept(cont, first) for cont in request.continuations]
        self._finish_step(request)
        return events

    @torch.inference_mode()
    def decode_step(self) -> list[TokenEvent]:
        """One batched forward over all decoding rows; returns the new token of every live continuation."""
        if not self.decoding:
            return []
        rows = self.decoding
        idx = torch.tensor([[c.last_token] for c in rows], dtype=torch.long, device=self.device)
        logits = self.model(idx, kv_cache=self.cache, start_row=0)[:, -1, :]
        return self._step_rows(rows, logits)  # rows[i] is cache row i: logits[i] is its

    def reset(self) -> None:
        """Forget every request (after an unexpected error left the batch in an unknown state)."""
        for cont in self.decoding:
            cont.request.done = True
        if self.prefilling is not None:
            self.prefilling.done = True
        self.decoding, self.prefilling = [], None
        for row in range(self.cache.capacity):
            self.cache.reset_row(row)

    def cancel(self, request: Request) -> None:
        """Drop a request in any state and free its rows (e.g. the client went away)."""
        if request is self.prefilling:
            self.prefilling = None
        elif not request.done:
            self._release(request)
        request.done = True

    # ---- internals ------------------------------------------------------------------------------------
    def _accept(self, cont: Continuation, sampled: int) -> TokenEvent | None:
        """Take a continuation's next token (forced by the tool if one is pending) and update its state."""
        forced = bool(cont.forced)
        token = cont.forced.popleft() if forced else sampled
        was_finished = cont.finished
        cont.tokens.append(token)
        cont.masks.append(0 if forced else 1)
        cont.last_token = token
        params = cont.request.params
        if params.tools:
            self._run_tool(cont, token)
        if was_finished:
            return None
        text = cont.text.feed(token)
        default_stop = token in self._default_stop_ids and not params.ignore_eos
        if default_stop or token in params.stop_token_ids or cont.text.stopped:
            cont.finish_reason = FINISH_STOP
        elif (
            cont.request.num_generated + 1 >= params.max_tokens
            or self.cache.lengths[cont.row] >= self.max_seq_len
        ):
            cont.finish_reason = FINISH_LENGTH
        if cont.finish_reason:
            text += cont.text.finish()
        return TokenEvent(cont.request, cont.index, token, forced, text, cont.finish_reason)

    def _run_tool(self, cont: Continuation, token: int) -> None:
        if token == self._python_start:
            cont.in_python, cont.python_ids = True, []
        elif token == self._python_end and cont.in_python:
            cont.in_python = False
            if cont.python_ids:
                result = calculator_evaluate(self.tokenizer.decode(cont.python_ids))
                if result is not None:
                    cont.forced.append(self._output_start)
                    cont.forced.extend(self.tokenizer.encode(result))
                    cont.forced.append(self._output_end)
        elif cont.in_python:
            cont.python_ids.append(token)

    def _release(self, request: Request) -> None:
        """Free a decoding request's rows, moving the last rows into the holes."""
        prefill_row = self._prefill_row if self.prefilling else None
        for row in sorted((c.row for c in request.continuations), reverse=True):
            last = len(self.decoding) - 1
            if row != last:
                mover = self.decoding[last]
                self.cache.copy_row(last, row)
                mover.row = row
                self.decoding[row] = mover
            self.decoding.pop()
        for cont in request.continuations:
            cont.row = -1
        if prefill_row is not None and prefill_row != self._prefill_row:
            self.cache.copy_row(prefill_row, self._prefill_row)

    # ---- nanochat's simple interface ------------------------------------------------------------------
    def generate(
        self,
        tokens: Sequence[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
        **kwargs,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield (token_column, mask_column) per step, one entry per sample, like nanochat's Engine."""
        params = SamplingParams(
            max_tokens=max_tokens or max(self.max_seq_len - len(tokens) + 1, 1),
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            n=num_samples,
            **kwargs,
        )
        if self.decoding or self.prefilling:
            raise CapacityError("generate() needs an idle engine")
        request = self.begin(tokens, params)
        while request.prefill_remaining:
            self.prefill(request)
        produced = request.continuations[0].tokens
        step = 0
        while True:
            while len(produced) <= step and not request.done:
                self.decode_step()
            if len(produced) <= step:
                return
            yield (
                [c.tokens[step] for c in request.continuations],
                [c.masks[step] for c in request.continuations],
            )
            step += 1

    def generate_batch(self, tokens: Sequence[int], num_samples: int = 1, **kwargs):
        """Non-streaming generate: (prompt + tokens up to the first stop token, masks) per sample."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, mask_column in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, mask_column, strict=True)):
                if done[i]:
                    continue
                if token in self._default_stop_ids:
                    done[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
        return results, masks
