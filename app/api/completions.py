"""OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

Works with the official `openai` client. Streaming answers are Server-Sent Events: for chat, one chunk per
choice with `delta.role`, then content deltas, then a chunk with each choice's `finish_reason`, an optional
usage chunk (`stream_options.include_usage`, empty `choices`) and `data: [DONE]`. An error after the stream
started (deadline, shutdown) arrives as one `data: {"error": {...}}` event, without `[DONE]`.

Tool calls (docs/serving.md, "Tool calls"): with `tools`, a reply that calls a function has
`message.tool_calls` (streamed: `tool_calls` deltas, the first with id, type, name and arguments "") and
`finish_reason: tool_calls`; `app.api.serving` splits the reply into content and the call.

Logprobs: chat `logprobs` + `top_logprobs`, completions `logprobs` (+ `echo`: the prompt's too), from the
model's raw distribution (docs/serving.md); streamed, each chunk carries the entries of its tokens. A
completion request may send several prompts (or token-id lists): choice index prompt_i * n + j, usage summed.

Ids: the completion id is `chatcmpl-<request id>` / `cmpl-<request id>`, the request id being the
client's `X-Request-ID` or a fresh one (returned in that header either way).

With the guardrail on (NANOCHAT_GUARDRAIL), the user's messages (or the completion prompt) are screened
before the model sees them: a blocked request is a 400 `content_blocked`, a flagged one is answered with
the header `X-Guardrail: flagged`.

`model` must be one of the served names (NANOCHAT_SERVED_MODEL_NAME / --served-model-name, default the
model folder's name), else 404 `model_not_found` as OpenAI answers; NANOCHAT_ACCEPT_ANY_MODEL=true takes
any name, for clients that send a fixed one. Responses carry the first served name. `/v1/models` lists
every served name and the engine (`backend`: nanochat or hf).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import RequestId, RuntimeDep
from app.api.rag import Grounding, check_attribution, citation_supports, with_retrieval
from app.api.serving import (
    Generation,
    Prompt,
    call_token,
    chat_logprobs,
    collect,
    completion_logprobs,
    delta_groups,
    event_stream,
    message_tool_calls,
    prepare_generation,
    prepare_generations,
    sse,
    tool_chunk_deltas,
)
from app.contract import CHAT_COMPLETIONS_PATH, COMPLETIONS_PATH
from app.errors import GENERATION_ERRORS, ErrorResponse, from_exception, invalid
from app.lifecycle import Runtime
from app.observability.context import note_response_id
from app.scheduler import Delta, GenerationStream, SchedulerError
from app.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    NanochatInfo,
    ResponseToolCall,
    RetrievalOptions,
    Usage,
)
from app.validation import check_model
from nanochat.backend import ChatTokenizer
from nanochat.tool_calls import CallSplitter, new_call_id

router = APIRouter(tags=["openai"])
OWNED_BY = "nanochat"
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON; SSE if stream=true"}}


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _json(model: ChatCompletion | Completion, headers: dict[str, str]) -> Response:
    return JSONResponse(model.model_dump(mode="json", exclude_none=True), headers=headers)


# ---- chat -------------------------------------------------------------------------------------------
@router.post(
    CHAT_COMPLETIONS_PATH,
    response_model=ChatCompletion,
    response_model_exclude_none=True,
    responses={**GENERATION_ERRORS, **STREAM_RESPONSE},
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    rt: RuntimeDep,
    rid: RequestId,
) -> Response:
    if body.model and body.model == rt.settings.rag_model:  # the retrieval alias: the defaults
        body = body.model_copy(update={"model": None, "retrieval": body.retrieval or RetrievalOptions()})
    check_model(body.model, rt.settings)
    grounded = None
    if body.retrieval is not None:  # docs/rag.md: the chunks as numbered sources, cited as [n]
        check_attribution(body)
        body, grounded = await with_retrieval(body, rt)
    generation = await prepare_generation(body, rt, rid)
    stream, prompt, headers = generation.stream, generation.prompt, generation.headers
    completion_id, created = f"chatcmpl-{rid}", int(time.time())
    note_response_id(completion_id)
    tokenizer = rt.tokenizer if body.logprobs else None
    start = call_token(body, rt.tokenizer)
    if body.stream:
        events = _chat_events(
            stream,
            completion_id,
            created,
            rt.model_name,
            body.include_usage,
            prompt,
            tokenizer,
            grounded=grounded,
            start=start,
        )
        return event_stream(events, stream, headers)
    result = await collect(stream, request, start)
    texts, supports = list(result.texts), None
    if grounded is not None and not result.calls:  # each reply's sentences and their sources
        supports = []
        for i, text in enumerate(texts):
            attribution = grounded.attribution()
            texts[i] = attribution.text(text)  # the same text unless it marks
            supports += citation_supports(i, attribution)
    completion = ChatCompletion(
        id=completion_id,
        created=created,
        model=rt.model_name,
        choices=[
            ChatChoice(
                index=i,
                message=_message(text, message_tool_calls(result.calls[i]) if result.calls else None),
                finish_reason=reason,
                logprobs=chat_logprobs(tokenizer, result.scored[i]) if tokenizer else None,
            )
            for i, (text, reason) in enumerate(zip(texts, result.finish_reasons, strict=True))
        ],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
        nanochat=_nanochat_info(prompt),
        citations=grounded.citations if grounded else None,
        supports=supports,
    )
    return _json(completion, headers)


def _message(text: str, tool_calls: list[ResponseToolCall] | None) -> AssistantMessage:
    """The reply: its text (null when it is only a tool call) and its call, if any."""
    return AssistantMessage(content=text if text or not tool_calls else None, tool_calls=tool_calls)


def content_chunk_writer(completion_id: str, created: int, model: str):
    """`(index, text) -> SSE event` for the per-token content chunks, formatted from a template: the same
    JSON as ChatCompletionChunk(...) would serialize (tested), at a fraction of its cost per token."""
    head = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[]).model_dump_json()
    prefix = "data: " + head[: head.rindex('"choices":[]')] + '"choices":[{"index":'

    def content(index: int, text: str) -> str:
        return f'{prefix}{index},"delta":{{"content":{json.dumps(text, ensure_ascii=False)}}}}}]}}\n\n'

    return content


def _nanochat_info(prompt: Prompt) -> NanochatInfo | None:
    return NanochatInfo(truncated_messages=prompt.truncated_messages) if prompt.truncated_messages else None


async def _chat_events(
    stream: GenerationStream,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    prompt: Prompt,
    tokenizer: ChatTokenizer | None,
    grounded: Grounding | None = None,
    start: int | None = None,
) -> AsyncIterator[str]:
    """`tokenizer` given: with logprobs, each content chunk carrying its tokens' entries (a token whose
    text is held back, part of a character or of a possible stop string, comes with the next text).
    `grounded` (retrieval): its citations and the reply's supports go in the last chunk before `[DONE]`,
    with no choices, like the usage; with `attribute`, the [n] markers go into the content as sentences end.
    `start` given (<|python_start|>, tools offered): a call is streamed as tool_calls deltas."""

    def chunk(choices: list[ChatChunkChoice], **extra) -> str:
        body = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, **extra)
        return sse(body)

    content = content_chunk_writer(completion_id, created, model)
    scored: list[list[Delta]] = [[] for _ in range(stream.n)]
    calls = [CallSplitter(start) for _ in range(stream.n)] if start is not None else []
    call_ids = [new_call_id() for _ in calls]
    attributions = [grounded.attribution() for _ in range(stream.n)] if grounded and not calls else []
    for i in range(stream.n):
        role = ChatChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))
        yield chunk([role], nanochat=_nanochat_info(prompt) if i == 0 else None)
    try:
        async for group in delta_groups(stream):
            events = []
            for delta in group:
                if calls:
                    events.extend(
                        chunk([c]) for c in _tool_choices(delta, calls, call_ids, scored, tokenizer)
                    )
                elif attributions and grounded and grounded.mark:  # no logprobs here (check_attribution)
                    text = attributions[delta.index].step(delta.text, bool(delta.finish_reason))
                    if text:
                        events.append(content(delta.index, text))
                elif tokenizer is not None:
                    scored[delta.index].append(delta)
                    if delta.text or delta.finish_reason:
                        logprobs = chat_logprobs(tokenizer, scored[delta.index])
                        scored[delta.index] = []
                        choice = ChatChunkChoice(
                            index=delta.index, delta=ChunkDelta(content=delta.text), logprobs=logprobs
                        )
                        events.append(chunk([choice]))
                elif delta.text:
                    events.append(content(delta.index, delta.text))
                if attributions and not grounded.mark:  # only watched: the text goes out as it came
                    attributions[delta.index].step(delta.text, bool(delta.finish_reason))
                if delta.finish_reason:
                    done = ChatChunkChoice(
                        index=delta.index, delta=ChunkDelta(), finish_reason=delta.finish_reason
                    )
                    events.append(chunk([done]))
            if events:
                yield "".join(events)
    except SchedulerError as e:
        yield sse(from_exception(e))
        return
    if include_usage:
        yield chunk([], usage=_usage(stream.prompt_tokens, stream.completion_tokens))
    if grounded is not None:
        supports = [s for i, a in enumerate(attributions) for s in citation_supports(i, a)]
        yield chunk([], citations=grounded.citations, supports=supports if attributions else None)
    yield "data: [DONE]\n\n"


def _tool_choices(
    delta: Delta,
    calls: list[CallSplitter],
    call_ids: list[str],
    scored: list[list[Delta]],
    tokenizer: ChatTokenizer | None,
) -> list[ChatChunkChoice]:
    """One delta of a request with tools as chunk choices (content or call pieces); with logprobs, the
    first carries the entries of the tokens since the last chunk (the finish chunk follows separately)."""
    i = delta.index
    deltas = tool_chunk_deltas(calls[i], delta, call_ids[i])
    if tokenizer is None:
        return [ChatChunkChoice(index=i, delta=d) for d in deltas]
    scored[i].append(delta)
    if not deltas and delta.finish_reason:
        deltas = [ChunkDelta(content="")]  # the last tokens' logprobs
    choices = [ChatChunkChoice(index=i, delta=d) for d in deltas]
    if choices:
        choices[0].logprobs = chat_logprobs(tokenizer, scored[i])
        scored[i] = []
    return choices


# ---- completions ------------------------------------------------------------------------------------
@router.post(
    COMPLETIONS_PATH,
    response_model=Completion,
    response_model_exclude_none=True,
    responses={**GENERATION_ERRORS, **STREAM_RESPONSE},
)
async def completions(
    body: CompletionRequest,
    request: Request,
    rt: RuntimeDep,
    rid: RequestId,
) -> Response:
    check_model(body.model, rt.settings)
    generations = await prepare_generations(body, rt, rid)
    headers = generations[0].headers
    completion_id, created = f"cmpl-{rid}", int(time.time())
    note_response_id(completion_id)
    if body.scores_only and not body.echo:
        raise invalid("max_tokens 0 scores the prompt only: it needs echo", "max_tokens")
    tokenizer = rt.tokenizer if body.logprobs is not None else None
    shape = _CompletionShape(body.n, body.echo, tokenizer, generated=not body.scores_only)
    if body.stream:
        events = _completion_events(generations, shape, completion_id, created, rt.model_name, body)
        return event_stream(events, _AllStreams(generations), headers)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    try:
        for p, generation in enumerate(generations):
            result = await collect(generation.stream, request)
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens if shape.generated else 0
            for j, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True)):
                choices.append(shape.choice(p, j, generation, text, reason, result.scored[j], first=True))
    finally:
        _AllStreams(generations).cancel()  # the prompts not collected yet, when one failed (no-op else)
    completion = Completion(
        id=completion_id,
        created=created,
        model=rt.model_name,
        choices=choices,
        usage=_usage(prompt_tokens, completion_tokens),
    )
    return _json(completion, headers)


@dataclass
class _CompletionShape:
    """Builds completion choices: index prompt_i * n + j (as OpenAI), the prompt's text first with `echo`,
    logprobs with a tokenizer (`text_offset` counts from the choice's first character, echo included)."""

    n: int
    echo: bool
    tokenizer: ChatTokenizer | None
    generated: bool = True  # False: max_tokens 0, the prompt alone (the one token sampled is dropped)
    offsets: dict[int, int] = field(default_factory=dict)  # streamed: each choice's characters so far

    def choice(
        self,
        p: int,
        j: int,
        generation: Generation,
        text: str,
        reason: str | None,
        scored: list[Delta],
        first: bool,
    ) -> CompletionChoice:
        """`first`: the choice's first piece (where the echo goes)."""
        index = p * self.n + j
        if not self.generated:
            text, scored, reason = "", [], reason and "length"
        echo = first and self.echo
        prompt_text = generation.prompt.text if echo else ""
        offset = self.offsets.get(index, 0)
        logprobs = None
        if self.tokenizer is not None:
            entries = self._echoed(generation) if echo else []
            logprobs = completion_logprobs(self.tokenizer, [*entries, *scored], offset)
            if echo and not generation.prompt.added_bos:  # the first prompt token has no context
                logprobs.token_logprobs[0] = logprobs.top_logprobs[0] = None
        text = prompt_text + text
        self.offsets[index] = offset + len(text)
        return CompletionChoice(index=index, text=text, finish_reason=reason, logprobs=logprobs)

    @staticmethod
    def _echoed(generation: Generation) -> list[Delta]:
        """The prompt's tokens with their logprobs: for a text prompt from its first text token on (after
        the BOS token the server put before it), else every token, the first one's logprob 0 until nulled."""
        ids, scored = generation.prompt.ids, generation.stream.prompt_logprobs
        entries = [
            Delta(0, t, "", None, logprob, top) for t, (logprob, top) in zip(ids[1:], scored, strict=True)
        ]
        return entries if generation.prompt.added_bos else [Delta(0, ids[0], "", None, 0.0), *entries]


class _AllStreams:
    """The streams of a request's prompts, cancelled together."""

    def __init__(self, generations: list[Generation]) -> None:
        self.streams = [g.stream for g in generations]

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()


async def _completion_events(
    generations: list[Generation],
    shape: _CompletionShape,
    completion_id: str,
    created: int,
    model: str,
    body: CompletionRequest,
) -> AsyncIterator[str]:
    """The prompts' choices one prompt after the other (all generate at once; later ones wait buffered)."""

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return sse(Completion(id=completion_id, created=created, model=model, choices=choices, usage=usage))

    try:
        for p, generation in enumerate(generations):
            started: set[int] = set()
            scored: list[list[Delta]] = [[] for _ in range(body.n)]
            async for group in delta_groups(generation.stream):
                events = []
                for d in group:
                    if d.logprob is not None:
                        scored[d.index].append(d)
                    if not (d.text or d.finish_reason or (body.echo and d.index not in started)):
                        continue
                    first = d.index not in started
                    started.add(d.index)
                    choice = shape.choice(
                        p, d.index, generation, d.text, d.finish_reason, scored[d.index], first
                    )
                    scored[d.index] = []
                    events.append(chunk([choice]))
                if events:
                    yield "".join(events)
    except SchedulerError as e:
        yield sse(from_exception(e))
        return
    finally:
        for generation in generations:
            generation.stream.cancel()
    if body.include_usage:
        prompt_tokens = sum(g.stream.prompt_tokens for g in generations)
        completion_tokens = sum(g.stream.completion_tokens for g in generations) if shape.generated else 0
        yield chunk([], _usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"


# ---- models -----------------------------------------------------------------------------------------
def _card(rt: Runtime, name: str) -> ModelCard:
    return ModelCard(id=name, created=int(rt.started_at), owned_by=OWNED_BY, backend=rt.settings.backend)


@router.get("/v1/models", response_model=ModelList)
async def list_models(rt: RuntimeDep) -> ModelList:
    """The served names of the one model this server serves (listed while it loads, too), and
    NANOCHAT_RAG_MODEL, the same model answering with retrieval."""
    names = [*rt.settings.served_names, *([rt.settings.rag_model] if rt.settings.rag_model else [])]
    return ModelList(data=[_card(rt, name) for name in names])


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses={404: {"model": ErrorResponse, "description": "not a served name (model_not_found)"}},
)
async def retrieve_model(model_id: str, rt: RuntimeDep) -> ModelCard:
    check_model(model_id, rt.settings)
    return _card(rt, model_id)
