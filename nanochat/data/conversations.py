"""Conversation data for chat fine-tuning: JSONL files with one conversation per line.

Each non-blank line is a JSON object `{"messages": [...]}` (other keys are kept and ignored). A message is
`{"role": ..., "content": ...}`:
- an optional `system` message first, then `user` and `assistant` alternating, starting with `user` and
  ending with `assistant` (the turn the model learns from);
- `content` is a str; an assistant's content may instead be a list of parts
  `{"type": "text" | "python" | "python_output", "text": str}` (tool use, as nanochat renders it).

Every problem is reported as `ConversationDataError` with the message `"{path}:{line}: {problem}"`
(only a missing or unreadable file has no line). Blank lines are skipped and a leading UTF-8 byte-order
mark is accepted.

It deliberately does not tokenize or render conversations (`nanochat.tokenizer` does) and does not
deduplicate or rebalance data.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nanochat.files import write_atomically

ROLES = ("system", "user", "assistant")


class ConversationDataError(ValueError):
    """A conversation file or record that cannot be used, located by path and line."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


def iter_conversations(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the conversations of a JSONL file one by one, each checked; the file is opened now."""
    source = Path(path)
    if source.is_dir():
        raise ConversationDataError(source, None, "is a folder, expected a .jsonl file")
    try:
        handle = source.open("rb")
    except FileNotFoundError:
        raise ConversationDataError(source, None, "file not found") from None
    except OSError as exc:
        raise ConversationDataError(source, None, f"cannot be read ({exc.strerror})") from None
    return _read(source, handle)


def load_conversations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All conversations of a JSONL file, each checked."""
    return list(iter_conversations(path))


def write_conversations(path: str | os.PathLike[str], conversations: Iterable[Mapping[str, Any]]) -> Path:
    """Check every conversation, then write them as JSONL (UTF-8, atomically); returns the path.

    An invalid conversation is reported at the line it would have occupied, and nothing is written.
    """
    target = Path(path)
    lines = []
    for line_number, conversation in enumerate(conversations, start=1):
        problem = conversation_problem(conversation)
        if problem:
            raise ConversationDataError(target, line_number, problem)
        try:
            lines.append(json.dumps(conversation, ensure_ascii=False) + "\n")
        except (TypeError, ValueError) as exc:
            raise ConversationDataError(target, line_number, f"cannot be written as JSON ({exc})") from None
    payload = "".join(lines).encode("utf-8")
    return write_atomically(target, lambda f: f.write(payload))


def split_conversations(
    conversations: Iterable[Mapping[str, Any]], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """(train, val): about `val_fraction` of the conversations held out, chosen with `seed`.

    Conversations that open with the same user message (ignoring case and surrounding spaces) go to the
    same side, so a question answered in several ways is never both trained on and evaluated.
    Both sides keep the input order.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    items = list(conversations)
    groups: dict[str, list[int]] = {}
    for index, conversation in enumerate(items):
        groups.setdefault(_opening(conversation), []).append(index)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
    held_out: set[int] = set()
    for key in keys:
        if len(held_out) >= target:
            break
        held_out.update(groups[key])
    train = [c for i, c in enumerate(items) if i not in held_out]
    val = [c for i, c in enumerate(items) if i in held_out]
    return train, val


def conversation_problem(conversation: Any) -> str | None:
    """What is wrong with a conversation, in words, or None when it is valid for training."""
    if not isinstance(conversation, Mapping):
        return f'expected a JSON object {{"messages": [...]}}, got {_kind(conversation)}'
    if "messages" not in conversation:
        return 'missing \'messages\' (expected {"messages": [{"role": ..., "content": ...}, ...]})'
    messages = conversation["messages"]
    if not isinstance(messages, list):
        return f"'messages' must be a list, got {_kind(messages)}"
    if not messages:
        return "'messages' is empty"
    first_turn = 1 if _role(messages[0]) == "system" else 0
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {index} must be an object with 'role' and 'content', got {_kind(message)}"
        for key in ("role", "content"):
            if key not in message:
                return f"message {index} has no '{key}'"
        role = message["role"]
        if role not in ROLES:
            return f"message {index} has unknown role {role!r}; expected one of {list(ROLES)}"
        expected = "user" if (index - first_turn) % 2 == 0 else "assistant"
        if index >= first_turn and role != expected:
            hint = " (a system message is only allowed first)" if role == "system" else ""
            return (
                f"message {index} has role {role!r} where {expected!r} was expected{hint}: after an optional "
                "system message, roles alternate user/assistant starting with user"
            )
        problem = _content_problem(index, role, message["content"])
        if problem:
            return problem
    if len(messages) == first_turn:
        return "has only a system message; a conversation needs a user and an assistant message"
    if _role(messages[-1]) != "assistant":
        return "ends with a user message; a training conversation must end with an assistant message"
    return None


def _read(path: Path, handle) -> Iterator[dict[str, Any]]:
    with handle:
        count = 0
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise ConversationDataError(
                    path, line_number, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8"
                ) from None
            if not text.strip():
                continue
            try:
                conversation = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConversationDataError(
                    path, line_number, f"invalid JSON: {exc.msg} (column {exc.colno})"
                ) from None
            problem = conversation_problem(conversation)
            if problem:
                raise ConversationDataError(path, line_number, problem)
            count += 1
            yield conversation
        if count == 0:
            raise ConversationDataError(path, 1, "no conversations: the file is empty or only blank lines")


def _content_problem(index: int, role: str, content: Any) -> str | None:
    if isinstance(content, str):
        return None
    # imported here: the tokenizer needs torch, which the Spark job's executors (spark_prepare.py) lack
    from nanochat.tokenizer import ASSISTANT_PART_TYPES

    if role != "assistant" or not isinstance(content, list):
        allowed = "a string or a list of parts" if role == "assistant" else "a string"
        return f"message {index} ({role}): content must be {allowed}, got {_kind(content)}"
    for part_index, part in enumerate(content):
        where = f"message {index} (assistant), part {part_index}"
        if not isinstance(part, Mapping):
            return f'{where}: expected an object {{"type": ..., "text": ...}}, got {_kind(part)}'
        if part.get("type") not in ASSISTANT_PART_TYPES:
            return f"{where}: type {part.get('type')!r} is not one of {list(ASSISTANT_PART_TYPES)}"
        if not isinstance(part.get("text"), str):
            return f"{where}: 'text' must be a string, got {_kind(part.get('text'))}"
    return None


def _opening(conversation: Mapping[str, Any]) -> str:
    """The first user message, normalized: the key that keeps repeated questions on one side of a split."""
    for message in conversation.get("messages", []):
        if _role(message) == "user" and isinstance(message.get("content"), str):
            return " ".join(message["content"].casefold().split())
    return ""


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None


def _kind(value: Any) -> str:
    """A JSON-ish name for a value's type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, Mapping):
        return "an object"
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)
