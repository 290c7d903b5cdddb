"""Every request limit of the service, checked here and nowhere else, before any model work.

The OpenAI routes first call `check_model` (the request's `model` against the served names: 404
`model_not_found`, unless NANOCHAT_ACCEPT_ANY_MODEL). The generation routes (`prepare_generation` in
app/api/serving.py) then call, in this order:
`check_sampling` (parameters the server cannot honour, max_tokens against NANOCHAT_MAX_TOKENS_LIMIT, n
against NANOCHAT_MAX_N), `check_messages` or `completion_text` (message count and sizes; one prompt and its
size), `check_context` (prompt tokens against the model's context) and `check_batch` (n against the
engine's batch). `/v1/classify` calls `classify_texts`. The stop-string count is a schema rule
(`stop_strings`, run by pydantic) so that it shows in the OpenAPI document. A prompt that fits but leaves
less room than max_tokens is not an error: generation stops at the context with finish_reason "length".

Every other failure is a 400 in the service's error shape (`app.errors.invalid`), its `param` naming the
field. The body's size is limited on the way in (BodyLimit in app/api/middleware.py), before it is parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.errors import invalid, model_not_found

if TYPE_CHECKING:
    from app.config import Settings
    from app.schemas import ChatMessage, GenerationRequest

MAX_STOP_STRINGS = 4  # as OpenAI
CONTEXT_HINT = " (shorten the conversation, or run the server with NANOCHAT_CONTEXT_OVERFLOW=truncate)"
AFTER_TRUNCATION = "even with only the system message and the last user message "


def stop_strings(value: Any) -> Any:
    """The schema's `stop`: one string becomes a list; at most MAX_STOP_STRINGS of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(value)}")
    return value


def check_model(requested: str | None, settings: Settings) -> None:
    """A request's `model` must be one of the served names (or absent), unless any name is accepted."""
    if requested is None or settings.accept_any_model or requested in settings.served_names:
        return
    raise model_not_found(requested, settings.served_names)


def check_sampling(body: GenerationRequest, settings: Settings) -> None:
    """Refuse what the server cannot honour, a max_tokens past the limit, and too many choices."""
    unsupported = body.unsupported_parameter()
    if unsupported:
        message = f"{unsupported} is not supported by this server (leave it unset)"
        raise invalid(message, unsupported, "unsupported_parameter")
    param, max_tokens = body.requested_max_tokens()
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        raise invalid(f"{param} is {max_tokens}; at most {settings.max_tokens_limit} is allowed", param)
    if body.choices > settings.max_n:
        raise invalid(f"n is {body.choices}; at most {settings.max_n} is allowed", "n")


def default_max_tokens(settings: Settings) -> int:
    """max_tokens for a request that names none."""
    return min(settings.default_max_tokens, settings.max_tokens_limit)


def check_messages(messages: Sequence[ChatMessage], settings: Settings) -> int:
    """Raise a 400 for too many messages or characters; return the characters in all."""
    if len(messages) > settings.max_messages:
        raise invalid(f"{len(messages)} messages; at most {settings.max_messages} are allowed", "messages")
    total = 0
    for i, message in enumerate(messages):
        content = len(message.text)
        chars = content + message.call_chars  # a call's name and arguments are rendered into the prompt too
        total += chars
        if chars > settings.max_message_chars:
            field = "content" if content > settings.max_message_chars else "tool_calls"
            raise invalid(
                f"message {i} has {chars} characters; at most {settings.max_message_chars} are allowed",
                f"messages.{i}.{field}",
            )
    if total > settings.max_total_chars:
        raise invalid(
            f"the messages have {total} characters in all; at most {settings.max_total_chars} are allowed",
            "messages",
        )
    return total


def completion_text(prompt: str | list[str], settings: Settings) -> str:
    """The one prompt of a completion request, within the character limit."""
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise invalid(f"got {len(prompt)} prompts; send one prompt per request", "prompt")
        prompt = prompt[0]
    limit = settings.max_total_chars
    if len(prompt) > limit:
        raise invalid(f"the prompt has {len(prompt)} characters; at most {limit} are allowed", "prompt")
    return prompt


def fits(tokens: int, context: int) -> bool:
    return tokens <= context


def check_context(tokens: int, context: int, param: str, *, truncated: bool = False, hint: str = "") -> None:
    """A 400 `context_length_exceeded` when the prompt is longer than the model's context; `truncated`:
    the prompt has already lost every turn it could."""
    if fits(tokens, context):
        return
    lead = AFTER_TRUNCATION if truncated else ""
    raise invalid(
        f"{lead}the prompt is {tokens} tokens; this model's context is {context} tokens{hint}",
        param,
        "context_length_exceeded",
    )


def check_batch(n: int, max_batch: int) -> None:
    """n choices are decoded together: at most the engine's batch."""
    if n > max_batch:
        raise invalid(f"n={n} is more than this server's batch of {max_batch}", None, "invalid_request")


def classify_texts(texts: str | list[str], settings: Settings) -> list[str]:
    """The texts of a classify request as a list, within the limits; a 400 naming the first one that is
    not."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise invalid("input is an empty list; send at least one text", "input")
    if len(texts) > settings.classify_max_inputs:
        raise invalid(
            f"input holds {len(texts)} texts; at most {settings.classify_max_inputs} are allowed", "input"
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise invalid(f"text {i} is empty", f"input.{i}")
        if len(text) > settings.classify_max_chars:
            raise invalid(
                f"text {i} has {len(text)} characters; at most {settings.classify_max_chars} are allowed",
                f"input.{i}",
            )
    return texts
