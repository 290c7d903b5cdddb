"""Conversation JSONL: valid files load, every problem is reported as `path:line: problem`."""

from __future__ import annotations

import json

import pytest

from nanochat.data.conversations import (
    ConversationDataError,
    conversation_problem,
    iter_conversations,
    load_conversations,
    split_conversations,
    write_conversations,
)
from nanochat.tokenizer import TokenizerError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
TOOL_USE = {
    "id": "kept",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 6*7? Ünïcödé"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute. "},
                {"type": "python", "text": "6*7"},
                {"type": "python_output", "text": "42"},
                {"type": "text", "text": "It is 42."},
            ],
        },
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": ""},
    ],
}


def user(text="q"):
    return {"role": "user", "content": text}


def assistant(content="a"):
    return {"role": "assistant", "content": content}


def test_valid_file_loads_skipping_blank_lines(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n   \n" + json.dumps(TOOL_USE).encode() + b"\r\n"
    )
    assert load_conversations(path) == [GOOD, TOOL_USE]
    assert list(iter_conversations(str(path))) == [GOOD, TOOL_USE]


BAD_LINES = [
    ('{"messages": [', "invalid JSON: Expecting value (column 15)"),
    ("[1, 2]", 'expected a JSON object {"messages": [...]}, got a list'),
    ('"just text"', "expected a JSON object"),
    ('{"conversation": []}', "missing 'messages'"),
    ('{"messages": "hi"}', "'messages' must be a list, got a string"),
    ('{"messages": []}', "'messages' is empty"),
    (json.dumps({"messages": ["hi", assistant()]}), "message 0 must be an object with 'role' and 'content'"),
    (json.dumps({"messages": [{"role": "user"}, assistant()]}), "message 0 has no 'content'"),
    (json.dumps({"messages": [{"content": "x"}, assistant()]}), "message 0 has no 'role'"),
    (json.dumps({"messages": [user(), {"role": "bot", "content": "x"}]}), "message 1 has unknown role 'bot'"),
    (json.dumps({"messages": [user(), user()]}), "message 1 has role 'user' where 'assistant' was expected"),
    (
        json.dumps({"messages": [assistant(), user()]}),
        "message 0 has role 'assistant' where 'user' was expected",
    ),
    (
        json.dumps({"messages": [user(), {"role": "system", "content": "s"}, assistant()]}),
        "message 1 has role 'system' where 'assistant' was expected (a system message is only allowed first)",
    ),
    (json.dumps({"messages": [{"role": "system", "content": "s"}]}), "has only a system message"),
    (json.dumps({"messages": [user(), assistant(), user()]}), "ends with a user message"),
    (
        json.dumps({"messages": [user(123), assistant()]}),
        "message 0 (user): content must be a string, got a number",
    ),
    (
        json.dumps({"messages": [{"role": "system", "content": None}, user(), assistant()]}),
        "message 0 (system): content must be a string, got null",
    ),
    (
        json.dumps({"messages": [user(), assistant({"text": "x"})]}),
        "message 1 (assistant): content must be a string or a list of parts, got an object",
    ),
    (json.dumps({"messages": [user(), assistant(["x"])]}), "part 0: expected an object"),
    (
        json.dumps({"messages": [user(), assistant([{"type": "image", "text": "x"}])]}),
        "message 1 (assistant), part 0: type 'image' is not one of ['text', 'python', 'python_output']",
    ),
    (
        json.dumps({"messages": [user(), assistant([{"type": "text", "text": "ok"}, {"type": "text"}])]}),
        "message 1 (assistant), part 1: 'text' must be a string, got null",
    ),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES, ids=[problem[:40] for _, problem in BAD_LINES])
def test_each_problem_is_reported_with_path_and_line(tmp_path, line, problem):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(ConversationDataError) as caught:
        load_conversations(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: "), message
    assert problem in message
    assert (caught.value.line, caught.value.problem) == (3, message.split(":3: ", 1)[1])


def test_empty_and_blank_files(tmp_path):
    for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(ConversationDataError, match="no conversations: the file is empty") as caught:
            load_conversations(path)
        assert str(caught.value).startswith(f"{path}:1: ")


def test_missing_file_is_reported_when_iteration_is_asked_for(tmp_path):
    path = tmp_path / "missing.jsonl"
    with pytest.raises(ConversationDataError) as caught:
        iter_conversations(path)  # raised now, not at the first next()
    assert str(caught.value) == f"{path}: file not found"
    with pytest.raises(ConversationDataError, match=r"is a folder, expected a \.jsonl file"):
        load_conversations(tmp_path)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"messages": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(ConversationDataError) as caught:
        load_conversations(path)
    assert str(caught.value).startswith(f"{path}:2: not valid UTF-8 (byte 17)")


def test_write_then_load_round_trip(tmp_path):
    path = tmp_path / "out" / "conversations.jsonl"
    assert write_conversations(path, [GOOD, TOOL_USE]) == path
    assert load_conversations(path) == [GOOD, TOOL_USE]
    assert "Ünïcödé" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
    assert path.read_text().count("\n") == 2


def test_write_refuses_invalid_conversations_and_writes_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(ConversationDataError) as caught:
        write_conversations(path, [GOOD, {"messages": [user()]}])
    assert str(caught.value).startswith(f"{path}:2: ends with a user message")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_validation_agrees_with_the_tokenizer(small_tokenizer):
    """What the loader accepts renders; what the tokenizer refuses, the loader refuses too."""
    for conversation in (GOOD, TOOL_USE):
        assert conversation_problem(conversation) is None
        ids, mask = small_tokenizer.render_conversation(conversation)
        assert len(ids) == len(mask) and any(mask)
    for line, _ in BAD_LINES[6:]:
        conversation = json.loads(line)
        assert conversation_problem(conversation) is not None
        if conversation["messages"][-1].get("role") == "assistant":  # the tokenizer renders prompts too
            with pytest.raises(TokenizerError):
                small_tokenizer.render_conversation(conversation)


def test_split_keeps_repeated_questions_together():
    conversations = [
        {"messages": [user(f"Question {i % 40}"), assistant(f"answer {i}")]} for i in range(200)
    ] + [{"messages": [user("  question 3 "), assistant("same question, other case")]}]
    train, val = split_conversations(conversations, val_fraction=0.1, seed=1)
    assert len(train) + len(val) == len(conversations)
    assert 20 <= len(val) <= 30
    opening = lambda c: c["messages"][0]["content"].strip().lower()  # noqa: E731
    assert not {opening(c) for c in train} & {opening(c) for c in val}
    assert split_conversations(conversations, val_fraction=0.1, seed=1) == (train, val)
    assert split_conversations(conversations, val_fraction=0.1, seed=2) != (train, val)
    assert train == [c for c in conversations if c in train]  # input order kept
