"""The row lifecycle every engine shares: `BatchedEngine` implements `nanochat.backend.GenerationBackend`
once, and an engine supplies only its model's forwards and where its keys and values live.

Written here, and nowhere else: the checks that start a generation, its states (PREFILLING -> DECODING ->
DONE, or DONE on cancel/reset), the rows it holds (its `n` continuations while decoding, reserved while it
prefills), sampling (each continuation with its own seeded generator, so its tokens do not depend on the
batch; penalties and logit biases vectorized over the rows that have them; the token masks of the rows
with a `SamplingParams.constraint`, JSON only, in one batched fill: `nanochat.constrain`), the stop rules (an
end-of-sequence token, a stop token id, a stop string: "stop"; a constraint's end token: its finish reason;
max_tokens or a full context: "length"), the
logprobs of the rows that ask for them (`token_logprobs`, nothing computed for the others) and nanochat's
simple `generate` interface. Also which free row still holds the sequence it last served, untouched since
(the next prefill's row, after a generation leaves with nothing moved over it), so that an engine with a
prefix cache can reuse its start in place (`_reuse_prefix`).

An engine (nanochat.engine.Engine, nanochat.hf_engine.HFEngine) implements the hooks below `# ---- hooks`:
a prefill chunk's and a decode step's forward, giving prefilled keys/values to the continuations' rows,
freeing a generation's rows, and each continuation's text stream.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Iterator, Sequence

import torch

from nanochat.backend import (
    FINISH_LENGTH,
    FINISH_STOP,
    CapacityError,
    Continuation,
    EngineError,
    Generation,
    GenerationState,
    SamplingParams,
    TokenEvent,
)
from nanochat.constrain import Grammars, RowConstraint
from nanochat.detokenize import TextStream
from nanochat.prefix_cache import PrefixCacheStats

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (logits/T would overflow to inf, then NaN)
MAX_LOGIT = 1e30  # penalized logits stay within +-this: finite in float32 even divided by MIN_TEMPERATURE


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> torch.Tensor:
    """Sample one token per row of (batch, vocab) logits; returns (batch,) ids.

    Matches nanochat: greedy at temperature 0 (and below MIN_TEMPERATURE); with top_k, softmax over the k
    largest logits only.
    min_p then keeps the tokens at least min_p times as likely as the likeliest (after the temperature);
    top_p (nucleus) keeps the smallest set of tokens whose probability reaches p.
    `generator`: one for the whole batch, or one per row (each row then draws from its own).
    """
    if temperature < MIN_TEMPERATURE:  # 0 is greedy; so is anything small enough to overflow logits/T
        return torch.argmax(logits, dim=-1)
    logits = logits.float()
    indices = None
    if top_k is not None and top_k < logits.size(-1):
        logits, indices = torch.topk(logits, top_k, dim=-1)  # sorted, largest first
    logits = logits / temperature
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        keep = probs >= min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        if indices is None:
            logits, indices = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
        drop = before >= top_p
        drop[:, 0] = False  # the most likely token always stays (a tiny top_p rounds to 0 in fp32)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        choice = torch.multinomial(probs, num_samples=1, generator=generator)
    else:
        rows = [torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)]
        choice = torch.cat(rows)
    if indices is not None:
        choice = indices.gather(1, choice)
    return choice[:, 0]


def _token_counts(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(len(seqs), vocab): how often each token occurs in each sequence."""
    flat = [torch.as_tensor(seq, dtype=torch.long) + k * vocab for k, seq in enumerate(seqs) if len(seq)]
    if not flat:
        return torch.zeros(len(seqs), vocab, dtype=torch.long, device=device)
    counts = torch.bincount(torch.cat(flat).to(device), minlength=len(seqs) * vocab)
    return counts.view(len(seqs), vocab)


def adjust_logits(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    outputs: Sequence[Sequence[int]],
    prompts: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Each row's penalties and logit bias, vectorized over the rows that have any (`params[i]`,
    `outputs[i]`: the tokens row i generated so far, `prompts[i]`: its prompt). Returns `logits` itself when
    no row has any, else an fp32 copy with only those rows changed. In order: repetition_penalty (over
    prompt and output), frequency and presence penalties (over the output), logit_bias."""
    active = [i for i, p in enumerate(params) if p.adjusts_logits]
    if not active:
        return logits
    vocab, device = logits.size(-1), logits.device
    rows = [params[i] for i in active]
    x = logits[active].float()

    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(p, name) for p in rows], dtype=torch.float32, device=device)[:, None]

    generated = None
    if any(p.repetition_penalty != 1.0 for p in rows):
        generated = _token_counts([outputs[i] for i in active], vocab, device)
        seen = (generated + _token_counts([prompts[i] for i in active], vocab, device)) > 0
        penalty = column("repetition_penalty")
        # a tiny penalty (1e-40 is 0 in float32) would divide a logit to inf, and inf - inf is NaN in softmax
        x = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty).clamp(-MAX_LOGIT, MAX_LOGIT), x)
    if any(p.frequency_penalty or p.presence_penalty for p in rows):
        if generated is None:
            generated = _token_counts([outputs[i] for i in active], vocab, device)
        x = x - column("frequency_penalty") * generated - column("presence_penalty") * (generated > 0)
    biased = [(k, token, bias) for k, p in enumerate(rows) for token, bias in p.logit_bias]
    if biased:
        k, token, bias = zip(*biased, strict=True)
        where = (torch.tensor(k, device=device), torch.tensor(token, device=device))
        x = x.index_put(where, torch.tensor(bias, dtype=torch.float32, device=device), accumulate=True)
    adjusted = logits.to(torch.float32, copy=True)
    adjusted[active] = x
    return adjusted


Scored = tuple[float, tuple[tuple[int, float], ...]]  # a token's logprob, its top (token, logprob) pairs


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], tops: Sequence[int]) -> list[Scored]:
    """For each row of (rows, vocab) logits: the log-softmax of `tokens[i]` and the `tops[i]` likeliest
    (token, logprob) pairs, likeliest first. The raw distribution: no temperature, top-k/p or penalties.
    One device-to-host copy for all rows."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(list(tokens), device=logprobs.device)[:, None]
    chosen = logprobs.gather(1, index)[:, 0].tolist()
    k = min(max(tops), logprobs.size(-1))
    if k:
        values, ids = torch.topk(logprobs, k, dim=-1)
        values, ids = values.tolist(), ids.tolist()
    scored = []
    for i, top in enumerate(tops):
        pairs = tuple(zip(ids[i][:top], values[i][:top], strict=True)) if top else ()
        scored.append((chosen[i], pairs))
    return scored


class BatchedEngine(abc.ABC):
    """`max_batch` rows, taken by the continuations in `decoding` plus the `n` of the generation being
    prefilled (one at a time); see the module docstring."""

    def __init__(
        self,
        max_batch: int,
        max_seq_len: int,
        prefill_chunk: int,
        device: torch.device,
        vocab_size: int,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.prefill_chunk = prefill_chunk
        self.device = device
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.decoding: list[Continuation] = []  # decoding[i].row == i
        self.prefilling: Generation | None = None
        self.prefilled_tokens = 0  # prompt tokens run through the model (a prefix cache's hits skip some)
        self._resident: tuple[int, list[int]] | None = None  # a free row and the tokens it still holds
        self._grammars: Grammars | None = None  # made on the first constrained request

    # ---- rows -----------------------------------------------------------------------------------------
    @property
    def num_decoding(self) -> int:
        return len(self.decoding)

    def free_rows(self) -> int:
        reserved = self.prefilling.params.n if self.prefilling else 0
        return self.max_batch - len(self.decoding) - reserved

    def can_begin(self, n: int = 1) -> bool:
        return self.prefilling is None and self.free_rows() >= n

    def prefix_cache_stats(self) -> PrefixCacheStats | None:
        """What the prefix cache holds and has done; None without one."""
        return None

    # ---- the lifecycle --------------------------------------------------------------------------------
    def begin(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Reserve rows for a generation and start its prefill. Raises EngineError / CapacityError."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) > self.max_seq_len:
            raise EngineError(f"the prompt has {len(prompt)} tokens; the context is {self.max_seq_len}")
        bad = next((t for t in prompt if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise EngineError(f"token id {bad} is outside the vocabulary (size {self.vocab_size})")
        if params.n > self.max_batch:
            raise EngineError(f"n={params.n} is more than the engine's batch of {self.max_batch}")
        if not self.can_begin(params.n):
            raise CapacityError("no free rows for this request now")
        bad = next((t for t in params.token_ids() if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise EngineError(
                f"token id {bad} (stop_token_ids, logit_bias, constraint) is outside the vocabulary"
            )
        constraints = [self._row_constraint(params) if params.constraint else None for _ in range(params.n)]
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        generation = Generation(prompt, params, torch.Generator(device=self.device).manual_seed(seed))
        for i in range(params.n):
            cont = Continuation(generation, i, self._text_stream(params), constraint=constraints[i])
            if i and not params.shared_first_token:  # choice i draws from its own generator, seeded seed + i
                cont.generator = torch.Generator(device=self.device).manual_seed((seed + i) % 2**63)
            generation.continuations.append(cont)
        self.prefilling = generation
        self._reset_prefill()
        in_place = self._take_resident(prompt)
        if params.prompt_logprobs is None:  # scoring the prompt needs the logits of all of it
            generation.prefilled = self._reuse_prefix(generation, in_place)
        return generation

    @torch.inference_mode()
    def prefill(self, generation: Generation, max_tokens: int | None = None) -> list[TokenEvent]:
        """Prefill up to `max_tokens` (default: the engine's chunk) more prompt tokens.

        Returns [] until the prompt is complete; then samples each continuation's first token from the
        prompt's logits (one for all, with `shared_first_token`, as nanochat does), moves the generation
        into decoding rows and returns its events.
        """
        if generation is not self.prefilling:
            raise EngineError("this request is not the one being prefilled")
        chunk = min(max_tokens or self.prefill_chunk, generation.prefill_remaining)
        start = generation.prefilled
        top = generation.params.prompt_logprobs
        logits = self._forward_prefill(generation.prompt_ids[start : start + chunk], start, top is not None)
        if top is not None:  # row i predicts prompt token start + i + 1
            targets = generation.prompt_ids[start + 1 : start + chunk + 1]
            if targets:
                generation.prompt_logprobs += token_logprobs(
                    logits[: len(targets)], targets, [top] * len(targets)
                )
            logits = logits[-1:]
        generation.prefilled += chunk
        self.prefilled_tokens += chunk
        if generation.prefill_remaining:
            return []
        conts = generation.continuations
        if generation.params.shared_first_token:
            firsts = self._sample(generation, conts[:1], logits).tolist() * len(conts)
        else:
            firsts = self._sample(generation, conts, logits.expand(len(conts), -1)).tolist()
        scored: list[Scored | None] = [None] * len(conts)
        if generation.params.logprobs is not None:  # each choice's own first token, from the raw logits
            top = generation.params.logprobs
            scored = list(token_logprobs(logits[-1:].expand(len(conts), -1), firsts, [top] * len(conts)))
        self.prefilling = None
        generation.state = GenerationState.DECODING
        for cont in generation.continuations:
            cont.row = len(self.decoding)
            self.decoding.append(cont)
        self._take_prefill(generation)
        events = [self._accept(c, f, s) for c, f, s in zip(conts, firsts, scored, strict=True)]
        self._finish_step(generation)
        return events

    @torch.inference_mode()
    def decode_step(self) -> list[TokenEvent]:
        """One batched forward over all decoding rows; returns the new token of every live continuation."""
        if not self.decoding:
            return []
        rows = list(self.decoding)
        return self._step_rows(rows, self._forward_decode(rows))

    def cancel(self, generation: Generation) -> None:
        """Drop a generation in any state and free its rows (e.g. the client went away)."""
        if generation is self.prefilling:
            self.prefilling = None
            self._reset_prefill()
        elif not generation.done:
            self._release(generation)
        generation.state = GenerationState.DONE

    def reset(self) -> None:
        """Forget every generation (after an unexpected error left the batch in an unknown state)."""
        for cont in self.decoding:
            cont.generation.state = GenerationState.DONE
        if self.prefilling is not None:
            self.prefilling.state = GenerationState.DONE
        self.decoding, self.prefilling = [], None
        self._resident = None
        self._forget_rows()

    # ---- one step's sampling and stop rules -----------------------------------------------------------
    def _step_rows(self, rows: list[Continuation], logits: torch.Tensor) -> list[TokenEvent]:
        """One decode step's bookkeeping, given `logits[i]` for `rows[i]`: the penalties and logit biases of
        the rows that have them (`adjust_logits`, all such rows at once), greedy rows in one argmax, the
        others with their generation's sampler and generators; then each continuation takes its token, and
        generations whose continuations have all finished leave. Returns the events of live continuations."""
        raw = logits  # the model's own distribution, which logprobs report, whatever sampling does to logits
        logits = self._constrained(rows, self._adjusted(rows, logits), raw)
        sampled: dict[int, int] = {}
        greedy = [i for i, c in enumerate(rows) if c.generation.params.temperature == 0.0]
        if greedy:
            sampled.update(zip(greedy, torch.argmax(logits[greedy], dim=-1).tolist(), strict=True))
        generations = list(dict.fromkeys(c.generation for c in rows))
        sampling = [g for g in generations if g.params.temperature != 0.0]
        index = {c: i for i, c in enumerate(rows)} if sampling else {}
        for generation in sampling:
            group = [index[c] for c in generation.continuations]
            tokens = self._sample(generation, generation.continuations, logits[group], adjusted=True)
            sampled.update(zip(group, tokens.tolist(), strict=True))
        scored = self._score(rows, raw, sampled)
        events = [self._accept(c, sampled[i], scored.get(i)) for i, c in enumerate(rows)]
        for generation in generations:
            self._finish_step(generation)
        return [e for e in events if e is not None]

    def _sample(
        self, generation: Generation, conts: list[Continuation], logits: torch.Tensor, adjusted: bool = False
    ) -> torch.Tensor:
        """A token for each of `conts` (of `generation`) from `logits[i]`, its penalties applied unless
        `adjusted` says they are; each with its own generator unless nanochat's shared one is asked for."""
        p = generation.params
        if not adjusted:
            logits = self._constrained(conts, self._adjusted(conts, logits), logits)
        generators: torch.Generator | list[torch.Generator] = generation.generator
        if not p.shared_first_token and len(conts) > 1:
            generators = [c.generator or generation.generator for c in conts]  # choice 0: the generation's
        return sample_next_token(logits, generators, p.temperature, p.top_k, p.top_p, p.min_p)

    @staticmethod
    def _adjusted(rows: list[Continuation], logits: torch.Tensor) -> torch.Tensor:
        params = [c.generation.params for c in rows]
        if not any(p.adjusts_logits for p in params):
            return logits
        prompts = [c.generation.prompt_ids for c in rows]
        return adjust_logits(logits, params, [c.tokens for c in rows], prompts)

    def _constrained(self, rows: list[Continuation], logits: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """`logits` with the tokens a constraint refuses at -inf in the rows that have one (their masks in
        one batched fill); `logits` itself when none has. Never changes `raw`, the model's logits."""
        # (a row whose next token is forced by the tool takes it whatever the logits)
        masked = [
            i for i, c in enumerate(rows) if c.constraint is not None and c.constraint.masked and not c.forced
        ]
        if not masked:
            return logits
        assert self._grammars is not None  # made by begin for a constrained generation
        allowed = self._grammars.allowed([rows[i].constraint for i in masked]).to(logits.device)
        if logits is raw:  # the model's own (logprobs read it): mask a copy
            logits = logits.clone()
        index = torch.tensor(masked, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
        return logits

    def _row_constraint(self, params: SamplingParams) -> RowConstraint:
        """A new continuation's constraint state (its grammar compiled once per engine and schema)."""
        if self._grammars is None:
            self._grammars = self._make_grammars()
        return self._grammars.row(params.constraint)

    def _score(
        self, rows: list[Continuation], logits: torch.Tensor, sampled: dict[int, int]
    ) -> dict[int, Scored]:
        """The logprobs of the rows whose generation asked for them (row index -> its token's), of the
        token each row takes next: the one forced by a tool if pending, else the sampled one."""
        asking = [
            i for i, c in enumerate(rows) if c.generation.params.logprobs is not None and not c.finished
        ]
        if not asking:
            return {}
        tokens = [rows[i].forced[0] if rows[i].forced else sampled[i] for i in asking]
        tops = [rows[i].generation.params.logprobs for i in asking]
        return dict(zip(asking, token_logprobs(logits[asking], tokens, tops), strict=True))

    def _accept(self, cont: Continuation, sampled: int, scored: Scored | None = None) -> TokenEvent | None:
        """Take a continuation's next token (one forced by a tool, if pending) and apply the stop rules;
        `scored`: the token's logprob and top alternatives, when the generation asked for them."""
        forced = bool(cont.forced)
        token = cont.forced.popleft() if forced else sampled
        was_finished = cont.finished
        cont.tokens.append(token)
        cont.masks.append(0 if forced else 1)
        cont.last_token = token
        self._on_token(cont, token)
        if was_finished:
            return None
        params = cont.generation.params
        text = cont.text.feed(token)
        eos = token in self.eos_token_ids and not params.ignore_eos
        ended = cont.constraint.advance(token) if cont.constraint is not None else None
        if ended:
            cont.finish_reason = ended
        elif eos or token in params.stop_token_ids or cont.text.stopped:
            cont.finish_reason = FINISH_STOP
        elif (
            cont.generation.num_generated + 1 >= params.max_tokens
            or self._row_length(cont) >= self.max_seq_len
        ):
            cont.finish_reason = FINISH_LENGTH
        if cont.finish_reason:
            text += cont.text.finish()
        logprob, top = scored if scored is not None else (None, ())
        return TokenEvent(cont.generation, cont.index, token, forced, text, cont.finish_reason, logprob, top)

    def _finish_step(self, generation: Generation) -> None:
        """Count the step; free the generation's rows once every continuation has finished."""
        generation.num_generated += 1
        if all(c.finished for c in generation.continuations):
            self._release(generation)
            generation.state = GenerationState.DONE

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
        kwargs.setdefault("shared_first_token", True)  # nanochat's Engine, token for token
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
        generation = self.begin(tokens, params)
        while generation.prefill_remaining:
            self.prefill(generation)
        produced = generation.continuations[0].tokens
        step = 0
        while True:
            while len(produced) <= step and not generation.done:
                self.decode_step()
            if len(produced) <= step:
                return
            yield (
                [c.tokens[step] for c in generation.continuations],
                [c.masks[step] for c in generation.continuations],
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
                if token in self.eos_token_ids:
                    done[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
        return results, masks

    # ---- hooks: what each engine supplies -------------------------------------------------------------
    @abc.abstractmethod
    def _text_stream(self, params: SamplingParams) -> TextStream:
        """A new continuation's token -> text stream (holding back stop strings)."""

    @abc.abstractmethod
    def _reset_prefill(self) -> None:
        """Empty the prefill's keys/values (a generation begins, or the one prefilling was cancelled)."""

    @abc.abstractmethod
    def _forward_prefill(self, ids: list[int], start: int, every: bool = False) -> torch.Tensor:
        """Run the prompt tokens `ids` (at positions start...) of the generation being prefilled; return
        the (1, vocab) logits after the last one (`every`: the (len(ids), vocab) logits after each)."""

    @abc.abstractmethod
    def _take_prefill(self, generation: Generation) -> None:
        """Give the prefilled keys/values to the generation's continuations, now in rows `cont.row`."""

    @abc.abstractmethod
    def _forward_decode(self, rows: list[Continuation]) -> torch.Tensor:
        """One forward of each row's last token; return (len(rows), vocab) logits, row i for rows[i]."""

    @abc.abstractmethod
    def _row_length(self, cont: Continuation) -> int:
        """Tokens in a continuation's cache row."""

    @abc.abstractmethod
    def _copy_row(self, src: int, dst: int) -> None:
        """Make cache row `dst` a copy of row `src` (its keys, values and length)."""

    @abc.abstractmethod
    def _forget_rows(self) -> None:
        """Empty every row's keys/values (`reset`)."""

    def _make_grammars(self) -> Grammars:
        """The constraint machinery over this engine's tokenizer (`nanochat.constrain`)."""
        raise EngineError("this engine has no constrained decoding (response_format, tools)")

    def _before_release(self, generation: Generation) -> None:
        """Called with a generation's rows still in place, just before they are freed."""
        return None

    # ---- rows: decoding rows [0, num_decoding), contiguous; the prefill row right after them ------------
    @property
    def _prefill_row(self) -> int:
        return len(self.decoding)

    def _release(self, generation: Generation) -> None:
        """Free a decoding generation's rows, moving the last rows into the holes (keeping
        `decoding[i].row == i`) and the generation being prefilled, if any, to the new prefill row."""
        self._before_release(generation)
        held = {c.row: c for c in generation.continuations}
        lengths = {c.row: self._row_length(c) for c in generation.continuations}
        prefill_row = self._prefill_row if self.prefilling else None
        written = set()
        for row in sorted(held, reverse=True):
            last = len(self.decoding) - 1
            if row != last:
                mover = self.decoding[last]
                self._copy_row(last, row)
                written.add(row)
                mover.row = row
                self.decoding[row] = mover
            self.decoding.pop()
        for cont in generation.continuations:
            cont.row = -1
        if prefill_row is not None and prefill_row != self._prefill_row:
            self._copy_row(prefill_row, self._prefill_row)
            written.add(self._prefill_row)
        # The row the next prefill takes may still hold one of these sequences: the next turn of a
        # conversation then finds its start in place (`_take_resident`).
        row = self._prefill_row
        self._resident = None
        if self.prefilling is None and row in held and row not in written:
            cont = held[row]
            self._resident = (row, (generation.prompt_ids + cont.tokens)[: lengths[row]])

    def _take_resident(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` the prefill row still holds, untouched since the sequence
        that left it (0 if none); forgotten either way, since the prefill writes over the row."""
        resident, self._resident = self._resident, None
        if resident is None or resident[0] != self._prefill_row:
            return 0
        same = 0
        for held, wanted in zip(resident[1], prompt, strict=False):
            if held != wanted:
                break
            same += 1
        return same

    def _on_token(self, cont: Continuation, token: int) -> None:
        """Called for every token a continuation takes (nanochat's engine runs its calculator tool here)."""
        return None

    def _reuse_prefix(self, generation: Generation, in_place: int) -> int:
        """Put keys/values already known for the start of the prompt into the (empty) prefill row; return
        how many prompt tokens that covers, fewer than the whole prompt (nanochat's prefix cache).
        `in_place`: leading prompt tokens whose keys/values the row still holds from its last sequence."""
        return 0
