"""One generation pipeline for every route that generates: `/v1/chat/completions`, `/v1/completions` and
nanochat's `/chat/completions` each call `prepare_generation` (`prepare_generations`: a completion's
several prompts), then shape the stream into their protocol; the logprobs' shapes are built here too.

The six steps, in order: validate the request (app/validation.py: every limit, before any model work),
render the prompt, fit it to the context (`context_overflow`: reject, or drop the oldest turns), screen the
user's texts with the guardrail, build the SamplingParams (`to_sampling_params`), submit to the scheduler.

Chat prompts are nanochat's conversation rendering, or, for a transformers tokenizer (NANOCHAT_BACKEND=hf),
the model's own chat template with its generation prompt; a completion prompt is BOS + the text. The
guardrail (NANOCHAT_GUARDRAIL) runs on its own threads (NANOCHAT_GUARDRAIL_WORKERS; past
NANOCHAT_GUARDRAIL_QUEUE waiting: 429). The rest of this module turns the scheduler's stream into text,
cancelled when the client goes away.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from anyio import to_thread
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from app import validation
from app.admission import GUARDRAIL
from app.config import Settings
from app.errors import invalid
from app.lifecycle import Runtime
from app.observability import metrics
from app.observability.context import note_generation
from app.scheduler import Delta, GenerationStream
from app.schemas import (
    LOGIT_BIAS_MAX,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceLogprobs,
    ChunkDelta,
    ChunkFunction,
    ChunkToolCall,
    CompletionLogprobs,
    CompletionRequest,
    FunctionCall,
    GenerationRequest,
    NamedToolChoice,
    ResponseToolCall,
    SamplingDefaults,
    TokenLogprob,
    TopLogprob,
    WebChatRequest,
    tool_fields,
)
from nanochat.backend import ChatTokenizer, Constraint, EngineError, SamplingParams
from nanochat.constrain import GrammarError, canonical_schema, check_schema
from nanochat.tokenizer import TokenizerError
from nanochat.tool_calls import (
    FINISH_TOOL_CALLS,
    CallSplitter,
    Function,
    ToolCallError,
    call_schema,
    chat_turns,
    check_functions,
    new_call_id,
)

logger = logging.getLogger(__name__)
INLINE_TOKENIZE_CHARS = 2000  # up to this many characters, tokenizing (~0.1 ms) beats a thread hop
GUARDRAIL_HEADER = "X-Guardrail"  # "flagged" on a response the guardrail flagged (NANOCHAT_GUARDRAIL=flag)


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    truncated_messages: int = 0  # oldest messages dropped to fit the context
    text: str = ""  # a completion prompt's text (what `echo` repeats)
    added_bos: bool = False  # the server put a BOS token before the completion prompt's text


@dataclass(frozen=True)
class Generation:
    """A submitted request: its stream, the prompt it was given, and the response headers it earned."""

    stream: GenerationStream
    prompt: Prompt
    headers: dict[str, str]


async def prepare_generation(
    body: ChatCompletionRequest | WebChatRequest, runtime: Runtime, request_id: str
) -> Generation:
    """`prepare_generations` for a body with one prompt (a chat)."""
    [generation] = await prepare_generations(body, runtime, request_id)
    return generation


async def prepare_generations(
    body: ChatCompletionRequest | CompletionRequest | WebChatRequest, runtime: Runtime, request_id: str
) -> list[Generation]:
    """Validate, render, fit to the context, screen, build the parameters, submit: one generation per
    prompt (a completion request may send several, submitted as `<request id>-<i>` after the first).
    Every refusal is raised before the request reaches the scheduler (the scheduler's own errors surface
    from `submit`, and cancel the prompts already submitted)."""
    settings = runtime.settings
    validation.check_sampling(body, settings)
    runtime.scheduler_or_503()  # the prompt needs the model's tokenizer
    functions = check_tools(body, runtime)
    if isinstance(body, CompletionRequest):
        prompts = [await completion_prompt(runtime, prompt) for prompt in body.prompts]
    else:
        prompts = [await chat_prompt(runtime, body.messages, functions)]
    texts, param = body.screened()
    if isinstance(body, CompletionRequest):  # token-id prompts too, as the text they are
        texts = [prompt.text for prompt in prompts]
    screened = await screen(runtime, texts, param, body.third_party_texts())
    params = sampling_params(body, settings)
    if isinstance(body, ChatCompletionRequest) and body.tools:
        params = tool_params(body, runtime.tokenizer, params)
    check_token_ids(params, runtime.tokenizer.get_vocab_size())
    validation.check_batch(params.n, runtime.max_batch)
    generations: list[Generation] = []
    try:
        for i, prompt in enumerate(prompts):
            stream = await submit(runtime, prompt, params, request_id if i == 0 else f"{request_id}-{i}")
            generations.append(Generation(stream, prompt, {**truncation_headers(prompt), **screened}))
    except BaseException:
        for generation in generations:
            generation.stream.cancel()
        raise
    return generations


# ---- prompts ----------------------------------------------------------------------------------------
def _conversation(
    messages: Sequence[ChatMessage], functions: Sequence[Function] = ()
) -> tuple[list[dict[str, Any]], bool]:
    """Our messages as the tokenizer's conversation, and whether it ends inside the assistant's turn
    (after tool results): "developer" is a system message, roles are checked, tools are rendered
    (nanochat.tool_calls)."""
    plain = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role == "system" and i != 0:
            text = f"message {i} is a system message; only the first message may be one"
            raise invalid(text, f"messages.{i}.role")
        if message.tool_calls and role != "assistant":
            raise invalid(
                f"message {i} has tool_calls; only assistant messages may", f"messages.{i}.tool_calls"
            )
        if role == "tool" and message.tool_call_id is None:
            raise invalid(f"message {i} is a tool message without tool_call_id", f"messages.{i}.tool_call_id")
        plain.append({"role": role, "content": message.text, **tool_fields(message)})
    try:
        turns, continues = chat_turns(plain, functions)
    except ToolCallError as e:
        raise invalid(str(e), e.param) from None
    last = plain[-1]["role"]
    if last != "user" and not continues:
        raise invalid(
            f"the last message has role {last!r}; it must be the user's turn (or tool results) to answer",
            f"messages.{len(plain) - 1}.role",
        )
    return turns, continues


def _render(runtime: Runtime, turns: list[dict[str, Any]]) -> list[int]:
    try:  # the backend's own rendering: nanochat's conversation format, or the model's chat template
        return runtime.tokenizer.chat_prompt(turns)
    except TokenizerError as e:
        raise invalid(str(e), "messages") from None


def render_chat(runtime: Runtime, messages: Sequence[ChatMessage]) -> list[int]:
    """The prompt ids of a chat, uncut (400 for a chat the model cannot answer as it stands)."""
    check_tool_messages(messages, runtime)
    return _render(runtime, _conversation(messages)[0])


def _chat_prompt(
    runtime: Runtime, messages: Sequence[ChatMessage], functions: Sequence[Function] = ()
) -> Prompt:
    turns, continues = _conversation(messages, functions)
    ids = _render(runtime, turns)
    context = runtime.context
    if validation.fits(len(ids), context):
        return Prompt(ids)
    if runtime.settings.context_overflow == "reject":
        validation.check_context(len(ids), context, "messages", hint=validation.CONTEXT_HINT)
    # truncate: drop the oldest user/assistant pair after the system message until the prompt fits
    head = turns[:1] if turns[0]["role"] == "system" else []
    rest = turns[len(head) :]
    dropped = 0
    keep = 2 if continues else 1  # the last user turn, and the assistant turn it continues
    while not validation.fits(len(ids), context) and len(rest) > keep:
        rest = rest[2:]
        dropped += 2
        ids = _render(runtime, head + rest)
    validation.check_context(len(ids), context, "messages", truncated=True)
    return Prompt(ids, dropped)


async def chat_prompt(
    runtime: Runtime, messages: Sequence[ChatMessage], functions: Sequence[Function] = ()
) -> Prompt:
    """Prompt ids for the assistant's next turn, within the limits, with the offered functions in the
    system text. Long conversations are tokenized off the event loop; short ones on it, where that takes
    less time than the hop to a worker thread."""
    if validation.check_messages(messages, runtime.settings) <= INLINE_TOKENIZE_CHARS:
        return _chat_prompt(runtime, messages, functions)
    return await to_thread.run_sync(_chat_prompt, runtime, messages, functions)


async def completion_prompt(runtime: Runtime, prompt: str | list[int]) -> Prompt:
    """BOS + the prompt as plain text (a base model's document continuation); token ids as they are."""
    tokenizer = runtime.tokenizer
    if isinstance(prompt, list):
        text = decode_ids(tokenizer, prompt, "prompt")
        ids, bos = list(prompt), None
    else:
        text = validation.completion_text(prompt, runtime.settings)
        bos = tokenizer.get_bos_token_id()
        ids = await to_thread.run_sync(lambda: tokenizer.encode(text, prepend=bos))
    validation.check_context(len(ids), runtime.context, "prompt")
    return Prompt(ids, text=text, added_bos=bos is not None)


def decode_ids(tokenizer: ChatTokenizer, ids: Sequence[int], param: str) -> str:
    """The text of token ids; a 400 naming `param` for an id outside the vocabulary."""
    vocab = tokenizer.get_vocab_size()
    bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab), None)
    if bad is not None:
        raise invalid(f"token id {ids[bad]} is outside the vocabulary (size {vocab})", f"{param}.{bad}")
    try:
        return tokenizer.decode(ids)
    except TokenizerError as e:
        raise invalid(str(e), param) from None


# ---- tools ------------------------------------------------------------------------------------------
def check_tool_messages(messages: Sequence[ChatMessage], runtime: Runtime) -> None:
    """Tool messages and calls are rendered in nanochat's chat format only."""
    if runtime.settings.backend != "nanochat":
        for i, message in enumerate(messages):
            if message.tool_calls or message.role == "tool":
                field = "tool_calls" if message.tool_calls else "role"
                raise invalid(
                    "tool calls need the nanochat backend (this server runs NANOCHAT_BACKEND=hf)",
                    f"messages.{i}.{field}",
                    "unsupported_parameter",
                )


def call_token(body: ChatCompletionRequest, tokenizer: ChatTokenizer) -> int | None:
    """The token that starts a call, when the request's reply may be one (tools offered, choice not none)."""
    if not body.tools or body.tool_choice == "none":
        return None
    return tokenizer.encode_special("<|python_start|>")


def message_tool_calls(splitter: CallSplitter) -> list[ResponseToolCall] | None:
    """A choice's `message.tool_calls`: its call (a fresh id), if it made one."""
    if not splitter.called:
        return None
    return [
        ResponseToolCall(
            id=new_call_id(), function=FunctionCall(name=splitter.name, arguments=splitter.arguments)
        )
    ]


def tool_chunk_deltas(splitter: CallSplitter, delta: Delta, call_id: str) -> list[ChunkDelta]:
    """A streamed choice's delta as chunk deltas: content, the call's first piece (its id, type, name and
    arguments ""), then pieces of its arguments (OpenAI's streamed tool_calls, index 0: one call a reply)."""
    out = []
    for piece in splitter.feed(delta.token, delta.text):
        if piece.kind == "content":
            out.append(ChunkDelta(content=piece.text))
        elif piece.kind == "call":
            function = ChunkFunction(name=piece.text, arguments="")
            out.append(
                ChunkDelta(
                    tool_calls=[ChunkToolCall(index=0, id=call_id, type="function", function=function)]
                )
            )
        else:
            out.append(
                ChunkDelta(tool_calls=[ChunkToolCall(index=0, function=ChunkFunction(arguments=piece.text))])
            )
    return out


def offered_functions(body: ChatCompletionRequest) -> list[Function]:
    return [
        Function(t.function.name, t.function.description, t.function.parameters) for t in body.tools or ()
    ]


def check_tools(body: GenerationRequest, runtime: Runtime) -> list[Function]:
    """The functions a chat request offers, checked with what it asks of them (400s naming the field)."""
    if not isinstance(body, ChatCompletionRequest | WebChatRequest):
        return []
    check_tool_messages(body.messages, runtime)
    if not isinstance(body, ChatCompletionRequest):
        return []
    choice = body.tool_choice
    if not body.tools:
        if choice == "required" or isinstance(choice, NamedToolChoice):
            raise invalid("tool_choice asks for a tool call, but the request offers no tools", "tool_choice")
        return []
    if runtime.settings.backend != "nanochat":
        message = "tools need the nanochat backend (this server runs NANOCHAT_BACKEND=hf)"
        raise invalid(message, "tools", "unsupported_parameter")
    if body.response_format is not None and body.response_format.type != "text":
        message = "response_format cannot be combined with tools: a reply is either a tool call or the format"
        raise invalid(message, "response_format", "unsupported_parameter")
    functions = offered_functions(body)
    try:
        check_functions(functions)
        for i, function in enumerate(functions):
            param = f"tools.{i}.function.parameters"
            try:
                check_schema(canonical_schema(function.arguments_schema))
            except GrammarError as e:
                raise ToolCallError(f"the parameters of {function.name!r}: {e}", param) from None
    except ToolCallError as e:
        raise invalid(str(e), e.param) from None
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {f.name for f in functions}:
        raise invalid(f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice")
    return functions


def tool_params(
    body: ChatCompletionRequest, tokenizer: ChatTokenizer, params: SamplingParams
) -> SamplingParams:
    """The parameters of a request with tools: the calculator off; with tool_choice none, <|python_start|>
    never sampled; else a call is JSON constrained to the functions' schemas (required or named: from the
    first token), ending the reply at <|python_end|> with finish_reason tool_calls."""
    start, end = tokenizer.encode_special("<|python_start|>"), tokenizer.encode_special("<|python_end|>")
    choice = body.tool_choice or "auto"
    if choice == "none":
        bias = (*((t, b) for t, b in params.logit_bias if t != start), (start, -LOGIT_BIAS_MAX))
        return replace(params, tools=False, logit_bias=bias)
    functions = offered_functions(body)
    if isinstance(choice, NamedToolChoice):
        functions = [f for f in functions if f.name == choice.function.name]
    constraint = Constraint(
        schema=canonical_schema(call_schema(functions)),
        trigger_token=start,
        force_trigger=choice != "auto",
        end_token=end,
        finish_reason=FINISH_TOOL_CALLS,
    )
    return replace(params, tools=False, constraint=constraint)


# ---- the guardrail ----------------------------------------------------------------------------------
async def screen(
    runtime: Runtime, texts: list[str], param: str, third_party: Sequence[tuple[str, str]] = ()
) -> dict[str, str]:
    """The guardrail's decision on the user's texts (none when it is off): `block` raises a 400
    `content_blocked` whose message names the rule and the score, never the text; `flag` lets the request
    go on and returns the response header `X-Guardrail: flagged`. Every decision is counted; each flag or
    block is logged once (the texts only with NANOCHAT_LOG_CONTENT). `third_party`, (field, text) pairs
    such as tool results, are screened as retrieved documents are: by the document rules only (an indirect
    injection: "note to the AI assistant", "ignore previous instructions"), the first match deciding."""
    guardrail = await runtime.screening_guardrail()  # waits while it loads: never serve unscreened
    if guardrail is None:
        return {}
    # ~4 ms a text, holding the GIL: on the guardrail's bounded pool, off the event loop
    decision = await runtime.admission[GUARDRAIL].run(guardrail.check_messages, texts)
    what = "this request"
    if decision.action == "allow" and third_party:
        found = await runtime.admission[GUARDRAIL].run(guardrail.check_documents, list(third_party))
        if found is not None:
            param, decision = found
            what = f"this request: its {param}, a tool's result, reads"
    settings = runtime.settings
    if settings.metrics:
        metrics.observe_guardrail(decision.action)
    if decision.action == "allow":
        return {}
    why = f"rule {decision.rule}; " if decision.rule else ""
    why += f"injection score {decision.score:.2f}, threshold {guardrail.threshold}"
    extra: dict[str, Any] = {"guardrail": decision.to_dict()}
    if settings.log_content:
        extra["texts"] = texts
    verb = "blocked" if decision.action == "block" else "flagged"
    logger.warning("guardrail %s the request as %s (%s)", verb, decision.label, why, extra=extra)
    if decision.action == "block":
        message = f"the guardrail blocked {what} as a likely prompt injection ({why})"
        raise invalid(message, param, "content_blocked")
    return {GUARDRAIL_HEADER: "flagged"}


# ---- sampling ---------------------------------------------------------------------------------------
def sampling_params(body: GenerationRequest, settings: Settings) -> SamplingParams:
    """The request's SamplingParams, unset fields taking the server's defaults."""
    defaults = SamplingDefaults(max_tokens=validation.default_max_tokens(settings))
    try:
        return body.to_sampling_params(defaults)
    except EngineError as e:  # the schema's bounds already hold; this is a second line of defence
        raise invalid(str(e)) from None


def check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """Token ids a request names (logit_bias, stop_token_ids) must be in the tokenizer's vocabulary."""
    for param, ids in (
        ("logit_bias", [token for token, _ in params.logit_bias]),
        ("stop_token_ids", params.stop_token_ids),
    ):
        bad = next((token for token in ids if token >= vocab_size), None)
        if bad is not None:
            raise invalid(f"{param}: token id {bad} is outside the vocabulary (size {vocab_size})", param)


# ---- running ----------------------------------------------------------------------------------------
async def submit(
    runtime: Runtime, prompt: Prompt, params: SamplingParams, request_id: str
) -> GenerationStream:
    """Queue the request; QueueFull (429), NotReady (503) and InvalidRequest (400) surface at once."""
    stream = await runtime.scheduler_or_503().submit(prompt.ids, params, request_id=request_id)
    note_generation(stream, runtime.model_name)  # its figures go to the access log, metrics and spans
    logger.debug(
        "queued: %d prompt tokens, max_tokens %d, n %d", len(prompt.ids), params.max_tokens, params.n
    )
    return stream


async def deltas(stream: GenerationStream) -> AsyncIterator[Delta]:
    """The stream's deltas; if the consumer stops early (client gone, task cancelled), the generation is
    cancelled and its rows freed. Scheduler errors (deadline, drain) are raised from here."""
    try:
        async for delta in stream:
            yield delta
    finally:
        stream.cancel()  # no-op when it finished


async def delta_groups(stream: GenerationStream) -> AsyncIterator[list[Delta]]:
    """Like `deltas`, but everything that already arrived comes as one list, so a response that falls
    behind the model sends one write for several tokens instead of one each."""
    try:
        async for delta in stream:
            yield [delta, *stream.take_ready()]
    finally:
        stream.cancel()


def sse(data: BaseModel | dict[str, Any]) -> str:
    """One Server-Sent Event carrying JSON (pydantic models without their null fields)."""
    text = data.model_dump_json(exclude_none=True) if isinstance(data, BaseModel) else json.dumps(data)
    return f"data: {text}\n\n"


def event_stream(
    events: AsyncIterator[str], stream: GenerationStream, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """An SSE response; the generation is cancelled when the response ends early, however it ends."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        background=BackgroundTask(_cancel_stream, stream),
    )


async def _cancel_stream(stream: GenerationStream) -> None:
    stream.cancel()  # async: a plain function would be sent to a worker thread


def truncation_headers(prompt: Prompt) -> dict[str, str]:
    return {"X-Prompt-Truncated": str(prompt.truncated_messages)} if prompt.truncated_messages else {}


@dataclass
class Collected:
    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int = 0
    scored: list[list[Delta]] = field(default_factory=list)  # each choice's tokens with logprobs, if asked
    calls: list[CallSplitter] = field(default_factory=list)  # with tools: each choice's call, if it made one


async def collect(stream: GenerationStream, request: Request, call_token: int | None = None) -> Collected:
    """Run a non-streaming request to the end; cancel it if the client disconnects meanwhile. With
    `call_token` (<|python_start|>, tools offered), each choice's text is split into content and a call."""
    parts: list[list[str]] = [[] for _ in range(stream.n)]
    scored: list[list[Delta]] = [[] for _ in range(stream.n)]
    finish: list[str | None] = [None] * stream.n
    calls = [CallSplitter(call_token) for _ in range(stream.n)] if call_token is not None else []
    watcher = asyncio.create_task(_cancel_on_disconnect(request, stream))
    try:
        async for delta in deltas(stream):
            if calls:
                pieces = calls[delta.index].feed(delta.token, delta.text)
                parts[delta.index].extend(p.text for p in pieces if p.kind == "content")
            else:
                parts[delta.index].append(delta.text)
            if delta.logprob is not None:
                scored[delta.index].append(delta)
            if delta.finish_reason:
                finish[delta.index] = delta.finish_reason
    finally:
        watcher.cancel()
    texts = ["".join(p) for p in parts]
    return Collected(texts, finish, stream.prompt_tokens, stream.completion_tokens, scored, calls)


# ---- logprobs ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=65536)
def token_piece(tokenizer: ChatTokenizer, token: int) -> tuple[str, bytes]:
    """A token's text and its bytes (nanochat's tokenizer gives the raw bytes, part of a UTF-8 character
    for some tokens, whose text then holds U+FFFD; otherwise the UTF-8 of its text)."""
    text = tokenizer.decode([token])
    raw = getattr(tokenizer, "id_to_token_bytes", None)
    try:
        return text, raw(token) if raw is not None else text.encode("utf-8")
    except TokenizerError:
        return text, text.encode("utf-8")


def chat_logprobs(tokenizer: ChatTokenizer, scored: Sequence[Delta]) -> ChoiceLogprobs:
    """OpenAI's chat `logprobs.content`: every generated token (the end-of-turn one included, as usage
    counts it) with its logprob and likeliest alternatives."""

    def top(token: int, logprob: float) -> TopLogprob:
        text, raw = token_piece(tokenizer, token)
        return TopLogprob(token=text, logprob=logprob, bytes=list(raw))

    content = []
    for delta in scored:
        alternatives = [top(t, lp) for t, lp in delta.top_logprobs]
        content.append(
            TokenLogprob(**top(delta.token, delta.logprob).model_dump(), top_logprobs=alternatives)
        )
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokenizer: ChatTokenizer, scored: Sequence[Delta], offset: int) -> CompletionLogprobs:
    """OpenAI's legacy `logprobs` of generated tokens whose text starts at character `offset` of the
    choice's text (the alternatives keyed by their text: two tokens with one text keep the likelier).

    A token's `text_offset` is the character of the choice's text its first byte belongs to: counted over
    the tokens' bytes, so the tokens that split one character (each shown as U+FFFD) share its offset and
    the ones after it are not pushed along by the replacement characters."""
    logprobs = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds a character's first bytes back
    for delta in scored:
        text, raw = token_piece(tokenizer, delta.token)
        alternatives: dict[str, float] = {}
        for token, logprob in delta.top_logprobs:
            alternatives.setdefault(token_piece(tokenizer, token)[0], logprob)
        logprobs.tokens.append(text)
        logprobs.token_logprobs.append(delta.logprob)
        logprobs.top_logprobs.append(alternatives)
        logprobs.text_offset.append(offset)
        offset += len(utf8.decode(raw))
    return logprobs


async def _cancel_on_disconnect(request: Request, stream: GenerationStream) -> None:
    # the body has been read, so the next ASGI message is the disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stream.cancel()
