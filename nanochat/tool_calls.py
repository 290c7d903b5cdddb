"""OpenAI-style function calling in nanochat's chat format: rendering tools, calls and results, and parsing
the calls the model writes.

nanochat's format has one tool-call syntax, the calculator's: the assistant writes
`<|python_start|>expression<|python_end|>` and the tool's output comes back in the same assistant turn as
`<|output_start|>result<|output_end|>`. A function call uses the same tokens with a JSON object in them:

    <|python_start|>{"name":"get_weather","arguments":{"city":"Paris"}}<|python_end|>

in compact JSON (no spaces), as the constrained decoding writes it (nanochat.constrain), so the calls in
the history read as the model's own.

- The offered functions go into the system text (`tools_text`): the line `Tools:`, then one compact JSON
  line per function, `{"name", "description", "parameters"}` (the fields it has, parameters as given), in
  the request's order. A
  system message the conversation already has comes first, then a blank line, then the tools.
- `chat_turns` turns OpenAI messages (plain dicts) into the tokenizer's conversation: an assistant
  message with `tool_calls` is its text (if any) then, per call, a python part (`call_text`) followed by
  an output part with the `tool` message that answers it (by `tool_call_id`); a later assistant message
  continues that same turn. When the messages end with tool results, the last turn is that unfinished
  assistant turn: the prompt continues it (no <|assistant_end|>), so the model writes its answer there.
- `call_schema` is the JSON schema of one call (what the constrained decoding enforces after
  <|python_start|>): anyOf over the functions of `{"name": const, "arguments": its parameters}`.
- `CallSplitter` splits one choice's generated tokens into content text and the call, incrementally
  (for streaming): the call's name as soon as it is complete, then the raw text of its arguments.

It deliberately does not: run any tool (the client does), sample, or know about HTTP; one call per
assistant step (generation ends at <|python_end|>).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FINISH_TOOL_CALLS = "tool_calls"  # the finish_reason of a reply that ends with a call
TOOLS_HEADER = "Tools:"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolCallError(ValueError):
    """A conversation or tool definition that cannot be rendered; `param` is the field to fix."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Function:
    """One offered function: its name, description and the JSON schema of its arguments (an object)."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None

    @property
    def arguments_schema(self) -> dict[str, Any]:
        """The schema the arguments are constrained to: none given is no arguments (`{}`); an untyped
        schema is made an object's, as OpenAI's arguments always are; and one with `properties` but no
        `additionalProperties` gets `false` (only the declared arguments, as OpenAI's strict mode asks),
        else a small model, free to add keys, can go on inventing them until max_tokens."""
        if not self.parameters:
            return dict(EMPTY_PARAMETERS)
        schema = {"type": "object", **self.parameters}
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
        return schema


def check_functions(functions: Sequence[Function], param: str = "tools") -> None:
    """Names valid and distinct, parameters an object's schema (else ToolCallError naming the field)."""
    seen: set[str] = set()
    for i, function in enumerate(functions):
        if not NAME_PATTERN.fullmatch(function.name):
            raise ToolCallError(
                f"function name {function.name!r} must be 1 to 64 letters, digits, '_' or '-'",
                f"{param}.{i}.function.name",
            )
        if function.name in seen:
            raise ToolCallError(f"two functions are named {function.name!r}", f"{param}.{i}.function.name")
        seen.add(function.name)
        kind = (function.parameters or {}).get("type", "object")
        if kind != "object":
            raise ToolCallError(
                f"the parameters of {function.name!r} must be a JSON schema of type 'object', got {kind!r}",
                f"{param}.{i}.function.parameters",
            )


def tools_text(functions: Sequence[Function]) -> str:
    """The tools' part of the system text: `Tools:` and one JSON line per function."""
    lines = [TOOLS_HEADER]
    for function in functions:
        entry: dict[str, Any] = {"name": function.name}
        if function.description:
            entry["description"] = function.description
        if function.parameters:
            entry["parameters"] = function.parameters  # as given: the prompt is the client's words
        lines.append(_compact(entry))
    return "\n".join(lines)


def call_text(name: str, arguments: Any) -> str:
    """A call as the model writes it between <|python_start|> and <|python_end|>."""
    return _compact({"name": name, "arguments": arguments})


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def call_schema(functions: Sequence[Function]) -> dict[str, Any]:
    """The JSON schema of one call to one of `functions` (the first property the name, as rendered)."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": f.arguments_schema},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# ---- the conversation -------------------------------------------------------------------------------
def chat_turns(
    messages: Sequence[Mapping[str, Any]], functions: Sequence[Function] = ()
) -> tuple[list[dict[str, Any]], bool]:
    """OpenAI messages -> (the tokenizer's conversation, whether it ends inside the assistant's turn).

    Each message is a dict with `role` (system, user, assistant, tool) and `content` (a str or None); an
    assistant message may have `tool_calls` ([{"id", "name", "arguments" (a JSON text)}]) and a tool
    message has `tool_call_id`. A tool message must answer a call of the assistant message before it
    (every call answered once, before the next user message). Errors name the message's field."""
    turns: list[dict[str, Any]] = []
    pending: dict[str, tuple[int, int]] = {}  # call id -> (its output part's place, its message's index)
    parts: list[dict[str, str]] | None = None  # the open assistant turn with tool calls, if any

    def check_answered() -> None:
        if pending:
            call_id, (_, index) = next(iter(pending.items()))
            raise ToolCallError(
                f"message {index}: its tool call {call_id!r} has no tool message answering it (each call "
                "needs one, right after the assistant message)",
                f"messages.{index}.tool_calls",
            )

    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            call_id = message.get("tool_call_id")
            if parts is None or call_id not in pending:
                raise ToolCallError(
                    f"message {i} is a tool message for {call_id!r}, but no assistant message before it "
                    "has an unanswered tool call with that id",
                    f"messages.{i}.tool_call_id",
                )
            parts[pending.pop(call_id)[0]]["text"] = content
            continue
        check_answered()
        if role != "assistant":
            parts = None
            turns.append({"role": role, "content": content})
            continue
        if parts is None:  # else: the answer after tool results goes on in the same turn
            parts = []
            turns.append({"role": "assistant", "content": parts})
        if content:
            parts.append({"type": "text", "text": content})
        calls = message.get("tool_calls") or []
        for j, call in enumerate(calls):
            if call["id"] in pending:
                raise ToolCallError(
                    f"message {i}: two tool calls have the id {call['id']!r}", f"messages.{i}"
                )
            parts.append({"type": "python", "text": call_text(call["name"], _arguments(call, i, j))})
            pending[call["id"]] = (len(parts), i)
            parts.append({"type": "python_output", "text": ""})
        if not calls:
            parts = None  # an answer without calls ends the turn
    check_answered()
    continues = parts is not None
    if functions:
        _add_tools(turns, functions)
    for turn in turns:  # a plain assistant turn is a string, as nanochat's conversations have it
        if turn["role"] == "assistant" and all(p["type"] == "text" for p in turn["content"]):
            turn["content"] = "".join(p["text"] for p in turn["content"])
    return turns, continues


def _arguments(call: Mapping[str, Any], i: int, j: int) -> Any:
    try:
        return json.loads(call["arguments"])
    except ValueError:
        raise ToolCallError(
            f"message {i}, tool call {j}: arguments must be a JSON text", f"messages.{i}.tool_calls.{j}"
        ) from None


def _add_tools(turns: list[dict[str, Any]], functions: Sequence[Function]) -> None:
    text = tools_text(functions)
    if turns and turns[0]["role"] == "system":
        turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{text}"}
    else:
        turns.insert(0, {"role": "system", "content": text})


# ---- the model's calls ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """What one token added to a choice: `kind` is "content" (text), "call" (the call's name, once) or
    "arguments" (more of the call's arguments text)."""

    kind: str
    text: str


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


class CallSplitter:
    """One choice's stream -> content text, then (after <|python_start|>) the call's name and the raw text
    of its arguments object, exactly as generated. Text the call's JSON wraps around the arguments (its
    head and closing brace) is never emitted; a call cut off before its name is complete emits nothing."""

    def __init__(self, python_start: int) -> None:
        self._start = python_start
        self._state = "content"  # -> "head" (after <|python_start|>) -> "arguments" -> "done"
        self._head = ""
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self.name: str | None = None
        self.arguments = ""

    @property
    def called(self) -> bool:
        return self.name is not None

    def feed(self, token: int, text: str) -> list[Piece]:
        if self._state == "content":
            if token == self._start:
                self._state = "head"
            return [Piece("content", text)] if text else []
        if self._state == "head":
            self._head += text
            brace = self._head.find("{")
            if brace > 0:  # text the detokenizer held back before the call (a partial character)
                leaked, self._head = self._head[:brace], self._head[brace:]
                return [Piece("content", leaked), *self.feed(token, "")]
            match = _HEAD.match(self._head)
            if not match:
                return []
            self.name = json.loads(match[1])
            self._state = "arguments"
            rest = self._head[match.end() :]
            return [Piece("call", self.name), *self._arguments(rest)]
        if self._state == "arguments":
            return self._arguments(text)
        return []

    def _arguments(self, text: str) -> list[Piece]:
        """The part of `text` inside the arguments value (a JSON object or array)."""
        begin, end = 0, len(text)
        for k, char in enumerate(text):
            if self._depth == 0 and char.isspace():  # before the value
                begin = k + 1
            elif self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = k + 1
                    self._state = "done"
                    break
        out = text[begin:end]
        self.arguments += out
        return [Piece("arguments", out)] if out else []
