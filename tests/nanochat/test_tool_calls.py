"""nanochat/tool_calls.py: tools, calls and results rendered in nanochat's chat format (token for token,
through the demo tokenizer), the call schema, and splitting a generated stream into content and a call."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from nanochat.tokenizer import Tokenizer
from nanochat.tool_calls import (
    CallSplitter,
    Function,
    Piece,
    ToolCallError,
    call_schema,
    call_text,
    chat_turns,
    check_functions,
    tools_text,
)

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
WEATHER = Function(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Function("get_time")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_directory(DEMO)


def call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "name": name, "arguments": arguments}


LOOP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}')]},
    {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
]


def test_tools_text_is_a_header_and_one_json_line_per_function() -> None:
    lines = tools_text([WEATHER, TIME]).split("\n")
    assert lines[0] == "Tools:"
    assert [json.loads(line) for line in lines[1:]] == [
        {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER.parameters},
        {"name": "get_time"},  # no parameters: none rendered (the schema is no arguments)
    ]


def test_tools_join_the_system_message_or_make_one() -> None:
    turns, _ = chat_turns([{"role": "system", "content": "Be brief."}, LOOP[0]], [TIME])
    assert turns[0] == {"role": "system", "content": "Be brief.\n\n" + tools_text([TIME])}
    turns, _ = chat_turns(LOOP[:1], [TIME])
    assert turns == [{"role": "system", "content": tools_text([TIME])}, LOOP[0]]
    assert chat_turns(LOOP[:1]) == (LOOP[:1], False)  # no tools: the messages as they were


def test_a_call_and_its_result_render_into_one_assistant_turn_that_the_prompt_continues(
    tok: Tokenizer,
) -> None:
    turns, continues = chat_turns(LOOP)
    assert continues
    assert turns[1] == {
        "role": "assistant",
        "content": [
            {"type": "python", "text": '{"name":"get_weather","arguments":{"city":"Paris"}}'},
            {"type": "python_output", "text": "sunny"},
        ],
    }
    special = tok.get_special_tokens()
    ids = tok.chat_prompt(turns)
    expected = [
        special["<|bos|>"],
        special["<|user_start|>"],
        *tok.encode("Weather in Paris?"),
        special["<|user_end|>"],
        special["<|assistant_start|>"],
        special["<|python_start|>"],
        *tok.encode('{"name":"get_weather","arguments":{"city":"Paris"}}'),
        special["<|python_end|>"],
        special["<|output_start|>"],
        *tok.encode("sunny"),
        special["<|output_end|>"],
    ]
    assert ids == expected  # no <|assistant_end|>, no new <|assistant_start|>: the model goes on


def test_the_answer_after_results_continues_the_turn_and_a_user_message_closes_it(tok: Tokenizer) -> None:
    messages = [
        *LOOP,
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks"},
    ]
    turns, continues = chat_turns(messages)
    assert not continues
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][-1] == {"type": "text", "text": "It is sunny."}
    special = tok.get_special_tokens()
    ids = tok.chat_prompt(turns)
    assert ids[-1] == special["<|assistant_start|>"]
    assert ids.count(special["<|assistant_end|>"]) == 1


def test_parallel_calls_interleave_with_their_results_in_call_order() -> None:
    messages = [
        LOOP[0],
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("a", "get_weather", '{"city": "Oslo"}'), call("b", "get_time", "{}")],
        },
        {"role": "tool", "content": "12:00", "tool_call_id": "b"},
        {"role": "tool", "content": "rain", "tool_call_id": "a"},
    ]
    turns, continues = chat_turns(messages)
    assert continues
    assert [(p["type"], p["text"]) for p in turns[1]["content"]] == [
        ("text", "Checking."),
        ("python", call_text("get_weather", {"city": "Oslo"})),
        ("python_output", "rain"),
        ("python", call_text("get_time", {})),
        ("python_output", "12:00"),
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([LOOP[0], {"role": "tool", "content": "x", "tool_call_id": "c1"}], "messages.1.tool_call_id"),
        ([*LOOP[:2], {"role": "tool", "content": "x", "tool_call_id": "other"}], "messages.2.tool_call_id"),
        ([*LOOP, {"role": "tool", "content": "again", "tool_call_id": "c1"}], "messages.3.tool_call_id"),
        (LOOP[:2], "messages.1.tool_calls"),  # a call nobody answered
        ([*LOOP[:2], {"role": "user", "content": "hm"}], "messages.1.tool_calls"),
        (
            [LOOP[0], {"role": "assistant", "tool_calls": [call("x", "f", "{not json")]}],
            "messages.1.tool_calls.0",
        ),
        (
            [LOOP[0], {"role": "assistant", "tool_calls": [call("x", "f", "{}"), call("x", "g", "{}")]}],
            "messages.1",
        ),
    ],
)
def test_bad_tool_messages_name_the_field(messages: list[dict], param: str) -> None:
    with pytest.raises(ToolCallError) as caught:
        chat_turns(messages)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("functions", "param"),
    [
        ([Function("bad name")], "tools.0.function.name"),
        ([Function("x" * 65)], "tools.0.function.name"),
        ([TIME, Function("get_time")], "tools.1.function.name"),
        ([TIME, Function("f", parameters={"type": "string"})], "tools.1.function.parameters"),
    ],
)
def test_bad_functions_name_the_field(functions: list[Function], param: str) -> None:
    with pytest.raises(ToolCallError) as caught:
        check_functions(functions)
    assert caught.value.param == param


def test_call_schema_accepts_exactly_the_calls_of_the_offered_functions() -> None:
    schema = call_schema([WEATHER, TIME])
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Rome"}}, schema)
    jsonschema.validate({"name": "get_time", "arguments": {}}, schema)
    for bad in (
        {"name": "get_weather", "arguments": {}},  # city required
        {"name": "get_time", "arguments": {"x": 1}},  # no arguments
        {"name": "other", "arguments": {}},
        {"name": "get_time", "arguments": {}, "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert call_schema([TIME])["properties"]["name"] == {"const": "get_time"}  # one function: no anyOf


def split(pieces_of_text: list[tuple[int, str]]) -> tuple[list[Piece], CallSplitter]:
    splitter = CallSplitter(python_start=7)
    out = [piece for token, text in pieces_of_text for piece in splitter.feed(token, text)]
    return out, splitter


def test_splitter_separates_content_name_and_raw_arguments_whatever_the_token_boundaries() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Pa}r\\"is", "n": [1, {"a": 2}]}}'
    for size in (1, 2, 3, 5, len(text)):
        chunks = [text[k : k + size] for k in range(0, len(text), size)]
        pieces, splitter = split([(1, "Let me check. "), (7, ""), *((2, c) for c in chunks), (8, "")])
        assert pieces[0] == Piece("content", "Let me check. ")
        assert pieces[1] == Piece("call", "get_weather")
        arguments = "".join(p.text for p in pieces[2:])
        assert {p.kind for p in pieces[2:]} == {"arguments"}
        assert arguments == splitter.arguments == '{"city": "Pa}r\\"is", "n": [1, {"a": 2}]}'
        assert json.loads(arguments) == {"city": 'Pa}r"is', "n": [1, {"a": 2}]}


def test_splitter_without_a_call_is_all_content_and_a_cut_call_is_partial() -> None:
    pieces, splitter = split([(1, "no "), (2, "call")])
    assert pieces == [Piece("content", "no "), Piece("content", "call")] and not splitter.called
    pieces, splitter = split([(7, ""), (2, '{"name": "ge')])  # cut before the name is complete
    assert pieces == [] and not splitter.called
    pieces, splitter = split([(7, ""), (2, '{ "name" :"f" , "arguments" : \n {"a": ')])  # any whitespace
    assert pieces == [Piece("call", "f"), Piece("arguments", '{"a": ')]


def test_text_held_back_before_the_call_stays_content() -> None:
    pieces, _ = split([(1, "a"), (7, ""), (2, '\ufffd{"name": "f", "arguments": {}}')])
    assert pieces == [
        Piece("content", "a"),
        Piece("content", "\ufffd"),
        Piece("call", "f"),
        Piece("arguments", "{}"),
    ]
