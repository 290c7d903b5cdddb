"""Request and response bodies of the HTTP API (pydantic), in one module.

OpenAI-compatible: `/v1/chat/completions`, `/v1/completions`, `/v1/models`. The nanochat web protocol:
`/chat/completions`. Text classification: `/v1/classify`. Static limits (temperature in [0, 2], top_p in
(0, 1], ...) live here, so they show in the OpenAPI document; limits that come from Settings
(max_tokens_limit, max_n, message counts and sizes) and the model's context are checked in
`app/validation.py`, with the classifier's.

Requests are strict (`"3"` is not an integer). The field policy of the OpenAI routes (docs/serving.md,
"Request fields"): every field is either honoured, or accepted and ignored because it cannot change the
reply (`IGNORED_FIELDS`, each with why), or refused with a 400 `unsupported_parameter` naming it: fields
this server knows but cannot honour are accepted only at their no-op values (`functions: []`, `best_of`: `n`),
and a field it does not know is refused (`extra="forbid"`). The generation requests turn themselves into
the engine's SamplingParams (`to_sampling_params(defaults)`). Responses are sent without null fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.validation import stop_strings
from nanochat.backend import MAX_LOGPROBS, MAX_TOP_K, Constraint, SamplingParams
from nanochat.constrain import canonical_schema, check_schema

MAX_COMPLETION_LOGPROBS = 5  # the legacy completions' logprobs, as OpenAI
WEB_TEMPERATURE, WEB_TOP_K = 0.8, 50  # the nanochat route's defaults (nanochat's chat_web)
# OpenAI fields the OpenAI routes accept and ignore, and why: none of them can change the reply
IGNORED_FIELDS: dict[str, str] = {
    "user": "an end-user id for the provider's abuse monitoring; this server keeps no per-user state",
    "safety_identifier": "OpenAI's newer name for `user`",
    "metadata": "tags for OpenAI's stored completions; nothing is stored here",
    "store": "OpenAI's stored completions; nothing is stored here",
    "service_tier": "OpenAI's billing and latency tier; this server has one tier",
    "prompt_cache_key": "OpenAI's cache routing hint; the prefix cache needs none",
}
LOGIT_BIAS_MAX = 100.0  # as OpenAI: a bias in [-100, 100] per token id


def ignored(name: str) -> Any:
    """The schema field of an ignored OpenAI field (IGNORED_FIELDS), documented as such."""
    return Field(None, description=f"accepted, ignored: {IGNORED_FIELDS[name]}")


def _logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    for key, bias in (value or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise ValueError(f'keys are token ids as strings (e.g. "50256"), got {key!r}')
        if not -LOGIT_BIAS_MAX <= bias <= LOGIT_BIAS_MAX:
            raise ValueError(f"the bias of token {key} is {bias}; it must be in [-100, 100]")
    return value


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]  # checked against the vocabulary


def _content(value: Any) -> Any:
    """A message's content: a string, or a list of text parts (joined later); anything else is an error."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("content must be a string or a list of {type: 'text', text: ...} parts")
    for i, part in enumerate(value):
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type != "text":
            raise ValueError(f"content part {i} has type {part_type!r}; only 'text' parts are supported")
    return value


class RequestBody(BaseModel):
    """The base of every request body: strict types, unknown fields ignored, no NaN or infinity."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


@dataclass(frozen=True)
class SamplingDefaults:
    """What a generation request gets for the sampling fields it leaves unset."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None


class GenerationRequest(RequestBody):
    """What `prepare_generation` asks of the chat, completion and nanochat request bodies."""

    def unsupported_parameter(self) -> str | None:
        """The first field set to something this server cannot do (it would change the result)."""
        return None

    def requested_max_tokens(self) -> tuple[str, int | None]:
        """The field that sets max_tokens (named in errors) and its value (None: the default)."""
        raise NotImplementedError

    @property
    def choices(self) -> int:
        """How many completions of the prompt to generate (n)."""
        return 1

    def screened(self) -> tuple[list[str], str]:
        """The texts the guardrail screens, and the field they come from."""
        raise NotImplementedError

    def third_party_texts(self) -> list[tuple[str, str]]:
        """Texts from third parties (a tool's result) that the guardrail screens as documents, each with
        its field."""
        return []

    def to_sampling_params(self, defaults: SamplingDefaults) -> SamplingParams:
        """The engine's parameters for this request (its limits are app/validation.py's business)."""
        raise NotImplementedError


# ---- shared pieces ----------------------------------------------------------------------------------
class TextPart(RequestBody):
    type: Literal["text"]
    text: Text


Content = Annotated[Text | list[TextPart] | None, BeforeValidator(_content)]


class ToolCallFunction(RequestBody):
    name: str
    arguments: str = Field(description="the arguments as a JSON text (an object)")


class ToolCall(RequestBody):
    """A call an assistant message made (as a response's `message.tool_calls` has it)."""

    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(RequestBody):
    # "developer" is OpenAI's newer "system"; "tool" carries a tool's result (its tool_call_id)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = Field(None, validate_default=True)  # checked when absent too: a user turn needs it
    name: str | None = None  # accepted, ignored
    tool_calls: list[ToolCall] | None = Field(None, description="assistant: the tools it called")
    tool_call_id: str | None = Field(None, description="tool: the id of the call this answers")

    @field_validator("content")
    @classmethod
    def _user_turn_has_text(cls, content: Any, info: ValidationInfo) -> Any:
        """A user turn must say something (OpenAI: 400); null is for an assistant turn that called tools."""
        if info.data.get("role") == "user" and not _joined(content).strip():
            raise ValueError("a user message needs text (got null, an empty or blank string, or no text)")
        return content

    @property
    def text(self) -> str:
        return _joined(self.content)

    @property
    def call_chars(self) -> int:
        """The characters of its tool calls' names and arguments (they are rendered into the prompt)."""
        return sum(len(c.function.name) + len(c.function.arguments) for c in self.tool_calls or ())


def tool_fields(message: ChatMessage) -> dict[str, Any]:
    """A message's tool fields as `nanochat.tool_calls.chat_turns` takes them (none: {})."""
    if message.tool_calls:
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in message.tool_calls
        ]
        return {"tool_calls": calls}
    return {"tool_call_id": message.tool_call_id} if message.role == "tool" else {}


def user_texts(messages: list[ChatMessage]) -> list[str]:
    return [message.text for message in messages if message.role == "user"]


def _joined(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


class StreamOptions(RequestBody):
    include_usage: bool = False


class SamplingFields(GenerationRequest):
    """What the OpenAI routes share: sampling, streaming, the no-op-only and the ignored OpenAI fields.
    Unknown fields are refused (the field policy in the module docstring)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, description="one of the names GET /v1/models lists (else 404)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="at most NANOCHAT_MAX_TOKENS_LIMIT")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1; 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="extension: sample from the k likeliest")
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Annotated[list[Text] | None, BeforeValidator(stop_strings)] = Field(
        None, description="a string or up to 4 strings; the text ends before the first one"
    )
    n: int = Field(1, ge=1, description="choices to generate, at most NANOCHAT_MAX_N")
    ignore_eos: bool = Field(False, description="extension: keep generating past end-of-turn (benchmarks)")
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="minus this from the logit of every token the choice generated"
    )
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="minus this times the count of each token the choice generated"
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0,
        le=2,
        description="extension (vLLM): a token seen in the prompt or output has its logit divided (> 0) "
        "or multiplied (< 0) by this; 1 is off",
    )
    min_p: float | None = Field(
        None,
        ge=0,
        le=1,
        description="extension (vLLM): keep tokens >= min_p times as likely as the likeliest",
    )
    logit_bias: Annotated[dict[str, float] | None, AfterValidator(_logit_bias)] = Field(
        None, description='token id (a string, e.g. "50256") -> a bias in [-100, 100] added to its logit'
    )
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="extension (vLLM): token ids that end a choice (finish_reason stop)"
    )
    nanochat_shared_first_token: bool = Field(
        False,
        description="extension: nanochat's n > 1, where the first token is sampled once and shared by all "
        "choices (by default each choice samples its own)",
    )
    user: str | None = ignored("user")
    safety_identifier: str | None = ignored("safety_identifier")
    metadata: dict[str, str] | None = ignored("metadata")
    store: bool | None = ignored("store")
    service_tier: str | None = ignored("service_tier")
    prompt_cache_key: str | None = ignored("prompt_cache_key")
    best_of: int | None = None  # accepted only at its no-op value, n

    def unsupported_parameter(self) -> str | None:
        if self.best_of is not None and self.best_of != self.n:
            return "best_of"
        return None

    @property
    def choices(self) -> int:
        return self.n

    def requested_max_tokens(self) -> tuple[str, int | None]:
        return "max_tokens", self.max_tokens

    def to_sampling_params(self, defaults: SamplingDefaults) -> SamplingParams:
        _, max_tokens = self.requested_max_tokens()
        return SamplingParams(
            max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            seed=self.seed,
            n=self.n,
            stop=tuple(self.stop or ()),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            min_p=self.min_p or 0.0,
            logit_bias=tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items()),
            shared_first_token=self.nanochat_shared_first_token,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---- retrieval (docs/rag.md): chat's `retrieval`, POST /v1/retrieve, POST /v1/embeddings --------------
RetrievalMode = Literal["hybrid", "bm25", "dense", "rerank"]


class RetrievalOptions(RequestBody):
    """Extension of chat: answer from an index's chunks, given to the model as numbered sources."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    index: str | None = Field(None, description="an index NANOCHAT_RAG_INDEXES names (default: the first)")
    k: int | None = Field(
        None, ge=1, description="chunks to retrieve, at most NANOCHAT_RAG_MAX_K (default NANOCHAT_RAG_K)"
    )
    mode: RetrievalMode | None = Field(None, description="default NANOCHAT_RAG_MODE")
    attribute: bool | None = Field(
        None,
        description="add [n] after each reply sentence a source supports and the reply did not cite "
        "(post-hoc, by word overlap: docs/rag.md); not with logprobs or tools",
    )


class Citation(BaseModel):
    """A source the chat prompt carried, numbered as the reply cites it ([1], [2], ...)."""

    index: int = Field(description="the number the reply cites it by")
    id: str = Field(description="the chunk's stable id")
    source: str = Field(description="the file, as indexed")
    heading: str = Field(description="the heading trail, ' > ' joined")
    start: int = Field(description="character span of the chunk in the source's text")
    end: int
    score: float = Field(description="the retrieval mode's score")
    flagged: str | None = Field(
        None, description="the guardrail rule it matched (NANOCHAT_RAG_GUARDRAIL=flag)"
    )


class CitationSupport(BaseModel):
    """A sentence of a reply and the sources that support it, measured after generation (docs/rag.md)."""

    choice: int = Field(description="the choice's index")
    start: int = Field(description="character span of the sentence in the choice's content")
    end: int
    sources: list[int] = Field(description="numbers of the citations holding most of its words, best first")
    scores: list[float] = Field(description="each one's share of the sentence's content words")
    cited: list[int] = Field(description="the numbers the reply itself wrote in the sentence ([n])")


# ---- tools (docs/serving.md, "Tool calls") -----------------------------------------------------------
class FunctionDefinition(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(description="1 to 64 letters, digits, '_' or '-'")
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="a JSON schema of the arguments (an object); the arguments are constrained to it"
    )
    strict: bool | None = Field(None, description="accepted: the arguments always follow the schema")


class ToolDefinition(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str


class NamedToolChoice(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["function"]
    function: FunctionName


# ---- response_format (structured outputs: nanochat/constrain.py) --------------------------------------
class JsonSchemaSpec(RequestBody):
    """OpenAI's `response_format.json_schema`. The schema is compiled here, so that a feature the grammar
    library does not support is a 400 naming it; the reply is always constrained to it, strict or not."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="the schema's name (not used)")
    description: str | None = Field(None, description="what the reply is for (not used)")
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="a JSON schema; {} allows any JSON value"
    )
    strict: bool | None = Field(None, description="accepted: the reply always follows the schema")

    @field_validator("schema_")
    @classmethod
    def _compiles(cls, schema: dict[str, Any]) -> dict[str, Any]:
        check_schema(canonical_schema(schema))  # GrammarError is a ValueError: a 400 naming the field
        return schema


class ResponseFormat(RequestBody):
    """OpenAI's response_format: text, json_object (any JSON object) or json_schema (JSON valid
    against it)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = Field(None, description="with type json_schema (and only then)")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema is required with type "json_schema", and allowed only then')
        return self

    def constraint(self) -> Constraint | None:
        """The engine's constraint for this format (None: free text)."""
        if self.json_schema is not None:
            return Constraint(canonical_schema(self.json_schema.schema_))
        return Constraint() if self.type == "json_object" else None


# ---- POST /v1/chat/completions ----------------------------------------------------------------------
class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="wins over max_tokens")
    tools: list[ToolDefinition] | None = Field(
        None, description="functions the model may call (docs/serving.md, 'Tool calls')"
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="default auto with tools; required or a named function: the reply is a call"
    )
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: ResponseFormat | None = Field(
        None,
        description="text; json_object (any JSON object); or json_schema: the reply is JSON valid against "
        "json_schema.schema (constrained decoding), unless cut by max_tokens (finish_reason length)",
    )
    parallel_tool_calls: bool | None = Field(
        None, description="at most one call per reply either way (docs/serving.md, 'Tool calls')"
    )
    logprobs: bool | None = Field(None, description="each content token's logprob (raw model distribution)")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="the likeliest alternatives of each token; needs logprobs",
    )
    retrieval: RetrievalOptions | None = Field(
        None,
        description="extension: retrieve chunks of an index, cite them as [n] (`citations`, docs/rag.md)",
    )

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return top

    def to_sampling_params(self, defaults: SamplingDefaults) -> SamplingParams:
        params = super().to_sampling_params(defaults)
        if self.response_format is not None:
            params = replace(params, constraint=self.response_format.constraint())
        return replace(params, logprobs=self.top_logprobs or 0) if self.logprobs else params

    def unsupported_parameter(self) -> str | None:
        if self.functions:
            return "functions"
        if self.function_call not in (None, "none", "auto"):
            return "function_call"
        return super().unsupported_parameter()

    def screened(self) -> tuple[list[str], str]:
        return user_texts(self.messages), "messages"

    def third_party_texts(self) -> list[tuple[str, str]]:
        return [(f"messages.{i}.content", m.text) for i, m in enumerate(self.messages) if m.role == "tool"]

    def requested_max_tokens(self) -> tuple[str, int | None]:
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class NanochatInfo(BaseModel):
    """Extension: what the server did to the request (present only when it did something)."""

    truncated_messages: int = Field(description="oldest messages dropped to fit the context")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(description="the token's UTF-8 bytes (part of a character, for some tokens)")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(
        description="the likeliest tokens at this position, likeliest first"
    )


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="a JSON text")


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="null when the reply is only a tool call")
    tool_calls: list[ResponseToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    nanochat: NanochatInfo | None = None
    citations: list[Citation] | None = Field(None, description="with `retrieval`: the numbered sources")
    supports: list[CitationSupport] | None = Field(
        None, description="with `retrieval`: the reply's sentences its sources support"
    )


class ChunkFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(BaseModel):
    """A piece of a streamed call: the first has its id, type, name and arguments "", the rest more
    arguments text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkFunction


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    nanochat: NanochatInfo | None = None
    citations: list[Citation] | None = Field(None, description="with `retrieval`: in the last chunk")
    supports: list[CitationSupport] | None = Field(
        None, description="with `retrieval`: in the last chunk, over the whole reply"
    )


# ---- POST /v1/completions ---------------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    prompt: Text | TokenIds | Annotated[list[Text] | list[TokenIds], Field(min_length=1)] = Field(
        description="a prompt (text or token ids), or a list of them: n choices each, indexed "
        "prompt_i * n + j (prompts times n at most NANOCHAT_MAX_N)"
    )
    echo: bool = Field(
        False, description="the prompt's text (and with logprobs its tokens) before each choice"
    )
    suffix: str | None = Field(None, description="refused: this server has no fill-in-the-middle mode")
    max_tokens: int | None = Field(
        None, ge=0, description="at most NANOCHAT_MAX_TOKENS_LIMIT; 0 (with echo): score the prompt only"
    )
    logprobs: int | None = Field(
        None, ge=0, le=MAX_COMPLETION_LOGPROBS, description="each token's logprob and its N likeliest"
    )

    def unsupported_parameter(self) -> str | None:
        if self.suffix:
            return "suffix"
        return super().unsupported_parameter()

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or token ids."""
        single = isinstance(self.prompt, str) or isinstance(self.prompt[0], int)
        return [self.prompt] if single else list(self.prompt)

    @property
    def choices(self) -> int:
        return self.n * len(self.prompts)

    def screened(self) -> tuple[list[str], str]:
        return [p for p in self.prompts if isinstance(p, str)], "prompt"

    @property
    def scores_only(self) -> bool:
        """max_tokens 0: the prompt's logprobs only (the engine still samples one token, not sent)."""
        return self.max_tokens == 0

    def to_sampling_params(self, defaults: SamplingDefaults) -> SamplingParams:
        body = self.model_copy(update={"max_tokens": 1}) if self.scores_only else self
        params = SamplingFields.to_sampling_params(body, defaults)
        if self.logprobs is None:
            return params
        return replace(params, logprobs=self.logprobs, prompt_logprobs=self.logprobs if self.echo else None)


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: per token its text, logprob (null for the first prompt token of an echo),
    its likeliest alternatives (text -> logprob) and where its text starts in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    """A whole completion, or (streamed) one SSE `data:` event of one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- GET /v1/models ---------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    backend: Literal["nanochat", "hf"] = Field(
        "nanochat", description="extension: the engine serving it (NANOCHAT_BACKEND)"
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- POST /chat/completions (nanochat web protocol) -------------------------------------------------
class WebChatRequest(GenerationRequest):
    """nanochat's web UI request; the reply is SSE `data: {"token": ..., "gpu": 0}` ... `{"done": true}`."""

    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K)
    retrieval: RetrievalOptions | None = Field(
        None,
        description="extension, as on /v1/chat/completions: the last event carries `citations` and "
        "`supports` beside `done` (docs/rag.md)",
    )

    def requested_max_tokens(self) -> tuple[str, int | None]:
        return "max_tokens", self.max_tokens

    def screened(self) -> tuple[list[str], str]:
        return user_texts(self.messages), "messages"

    def third_party_texts(self) -> list[tuple[str, str]]:
        return [(f"messages.{i}.content", m.text) for i, m in enumerate(self.messages) if m.role == "tool"]

    def to_sampling_params(self, defaults: SamplingDefaults) -> SamplingParams:
        """As nanochat's chat_web: temperature 0.8 and top_k 50 unless the request says otherwise."""
        return SamplingParams(
            max_tokens=defaults.max_tokens if self.max_tokens is None else self.max_tokens,
            temperature=WEB_TEMPERATURE if self.temperature is None else self.temperature,
            top_k=WEB_TOP_K if self.top_k is None else self.top_k,
            top_p=defaults.top_p,
        )


# ---- POST /v1/classify ------------------------------------------------------------------------------
class ClassifyRequest(RequestBody):
    input: Text | list[Text] = Field(
        description="one text, or a list of texts (at most NANOCHAT_CLASSIFY_MAX_INPUTS, each at most "
        "NANOCHAT_CLASSIFY_MAX_CHARS characters)"
    )
    model: str | None = Field(
        None, description="the classifier's name or name/version (e.g. fortunes, fortunes/v1); default: it"
    )


class Classification(BaseModel):
    index: int = Field(description="the position of the text in `input`")
    label: str = Field(description="the most probable class")
    score: float = Field(description="its probability")
    scores: dict[str, float] = Field(description="every class's probability (they sum to 1)")


class ClassifyUsage(BaseModel):
    inputs: int
    characters: int


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "list",
                    "model": "fortunes/v1",
                    "data": [
                        {
                            "index": 0,
                            "label": "computers",
                            "score": 0.71,
                            "scores": {"computers": 0.71, "science": 0.12, "work": 0.09, "politics": 0.08},
                        }
                    ],
                    "usage": {"inputs": 1, "characters": 27},
                }
            ]
        }
    )

    object: Literal["list"] = "list"
    model: str = Field(description="name/version of the classifier that answered")
    data: list[Classification]
    usage: ClassifyUsage


# ---- probes -----------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    model: str


# ---- POST /tokenize, POST /detokenize (vLLM's shapes) ------------------------------------------------
class TokenizeRequest(RequestBody):
    """A completion prompt or a chat, tokenized as the generation routes would (one of the two)."""

    model: str | None = Field(None, description="one of the names GET /v1/models lists (else 404)")
    prompt: Text | None = Field(None, description="text, tokenized as /v1/completions does")
    add_special_tokens: bool = Field(True, description="with prompt: the beginning-of-sequence token first")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="a chat, as /v1/chat/completions"
    )
    add_generation_prompt: Literal[True] = Field(
        True, description="with messages: the assistant's turn opened (the only rendering served)"
    )


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int = Field(description="the model's context in tokens")
    tokens: list[int]


class DetokenizeRequest(RequestBody):
    model: str | None = Field(None, description="one of the names GET /v1/models lists (else 404)")
    tokens: list[int] = Field(description="token ids, each in [0, vocabulary size)")


class DetokenizeResponse(BaseModel):
    prompt: str


# ---- POST /v1/retrieve, POST /v1/embeddings (docs/rag.md) ---------------------------------------------
class RetrieveRequest(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    query: Text = Field(description="what to look for (at most NANOCHAT_RAG_MAX_QUERY_CHARS characters)")
    k: int | None = Field(
        None, ge=1, description="chunks to return, at most NANOCHAT_RAG_MAX_K (default NANOCHAT_RAG_K)"
    )
    index: str | None = Field(None, description="an index NANOCHAT_RAG_INDEXES names (default: the first)")
    mode: RetrievalMode | None = Field(
        None, description="hybrid (BM25 + dense, fused by rank), bm25, dense, or rerank when configured"
    )


class RetrievedChunk(BaseModel):
    rank: int = Field(description="1-based, best first")
    id: str
    source: str
    heading: str
    start: int = Field(description="character span in the source's text")
    end: int
    score: float
    text: str
    flagged: str | None = Field(
        None, description="the guardrail rule it matched (NANOCHAT_RAG_GUARDRAIL=flag)"
    )


class RetrieveResponse(BaseModel):
    object: Literal["list"] = "list"
    index: str
    mode: RetrievalMode
    embedder: str
    data: list[RetrievedChunk]
    dropped: int = Field(0, description="chunks the guardrail dropped (NANOCHAT_RAG_GUARDRAIL=drop)")


class EmbeddingRequest(RequestBody):
    """OpenAI's embeddings request (text inputs only)."""

    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="a text or a list of texts (at most NANOCHAT_RAG_EMBED_MAX_INPUTS, each at most "
        "NANOCHAT_RAG_EMBED_MAX_CHARS characters)"
    )
    model: str | None = Field(None, description="an index name or its embedder's (default: the first index)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes (what the official client asks for)"
    )
    dimensions: int | None = Field(None, ge=1, description="accepted only as the embedder's own size")
    user: str | None = ignored("user")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="words and punctuation marks of the inputs")
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="the embedder that made them")
    usage: EmbeddingUsage
