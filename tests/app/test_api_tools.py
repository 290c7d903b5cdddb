"""Tool calls (`tools`, `tool_choice`, `tool` messages) through the official `openai` client against the
demo-model server: calls in OpenAI's shape, streamed and not, their arguments valid against the function's
schema (constrained decoding), the whole loop call -> tool result -> answer, and every bad input a 400
naming its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.serving import tool_params
from app.schemas import ChatCompletionRequest, SamplingDefaults
from nanochat.tokenizer import Tokenizer

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer.from_directory(REPO_ROOT / "models" / "demo")
SPECIAL = TOKENIZER.get_special_tokens()
PYTHON_START = SPECIAL["<|python_start|>"]
WEATHER_PARAMETERS = {  # small: the demo model's context is 256 tokens, and the tools are in the prompt
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 9}, "days": {"type": "integer", "maximum": 7}},
    "required": ["city", "days"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time"}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
SAMPLINGS = [{"temperature": 0}, {"seed": 1}, {"seed": 2}, {"seed": 3}]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": {"type": "object", "additionalProperties": False}}


def create(client: openai.OpenAI, messages=ASK, **kwargs: Any):
    kwargs.setdefault("max_tokens", 80)
    kwargs.setdefault("tools", TOOLS)
    return client.chat.completions.create(model="demo", messages=messages, **kwargs)


def check_call(name: str, arguments: str, choice: Any) -> None:
    assert name == "get_weather" if choice == NAMED else name in SCHEMAS
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize(
    "sampling", SAMPLINGS, ids=lambda s: "greedy" if s.get("temperature") == 0 else "seed"
)
@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_required_and_named_choices_return_a_valid_call(
    client: openai.OpenAI, choice: Any, sampling: dict
) -> None:
    completion = create(client, tool_choice=choice, **sampling)
    [result] = completion.choices
    assert result.finish_reason == "tool_calls"
    assert result.message.content is None
    [call] = result.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    check_call(call.function.name, call.function.arguments, choice)


def finished(http: httpx.Client, reason: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            labels = {"finish_reason": reason}
            if sample.name == "nanochat_finished_requests_total" and sample.labels == labels:
                return sample.value
    return 0.0  # a label value shows once counted


def test_a_call_is_counted_as_finished_by_tool_calls(client: openai.OpenAI, http: httpx.Client) -> None:
    before = {reason: finished(http, reason) for reason in ("tool_calls", "stop")}
    assert create(client, tool_choice="required", temperature=0).choices[0].finish_reason == "tool_calls"
    grown = {reason: finished(http, reason) - before[reason] for reason in before}
    assert grown == {"tool_calls": 1, "stop": 0}


@pytest.mark.parametrize(
    "sampling", SAMPLINGS, ids=lambda s: "greedy" if s.get("temperature") == 0 else "seed"
)
@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_a_streamed_call_comes_as_deltas_equal_to_the_whole_reply(
    client: openai.OpenAI, choice: Any, sampling: dict
) -> None:
    whole = create(client, tool_choice=choice, **sampling).choices[0].message.tool_calls[0]
    chunks = list(create(client, tool_choice=choice, stream=True, **sampling))
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, *rest = [call for delta in calls for call in delta]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        whole.function.name,
        "",
    )
    assert first.id.startswith("call_")
    assert all(c.index == 0 and c.id is None and c.function.name is None for c in rest)
    assert "".join(c.function.arguments for c in rest) == whole.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    check_call(first.function.name, whole.function.arguments, choice)


def test_the_clients_stream_helper_assembles_the_call(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="demo", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, seed=5
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    check_call(call.function.name, call.function.arguments, "required")
    assert final.choices[0].finish_reason == "tool_calls"


def test_each_of_n_choices_makes_its_own_call(client: openai.OpenAI) -> None:
    completion = create(client, tool_choice="required", n=3, seed=7)
    ids = set()
    for result in completion.choices:
        [call] = result.message.tool_calls
        check_call(call.function.name, call.function.arguments, "required")
        ids.add(call.id)
    assert len(ids) == 3


def test_the_full_loop_call_then_result_then_answer(client: openai.OpenAI, http: httpx.Client) -> None:
    message = create(client, tool_choice=NAMED, temperature=0).choices[0].message
    [call] = message.tool_calls
    arguments = json.loads(call.function.arguments)
    result = f"{arguments['city']}: sunny, 21 degrees"  # the tool, run here
    messages = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    # the prompt continues the assistant's turn right after the tool's output
    tokens = http.post("/tokenize", json={"messages": messages}).raise_for_status().json()["tokens"]
    assert tokens[-1] == SPECIAL["<|output_end|>"]
    call_text = f'{{"name":"get_weather","arguments":{call.function.arguments}}}'
    rendered = (
        f"<|assistant_start|><|python_start|>{call_text}<|python_end|><|output_start|>{result}<|output_end|>"
    )
    assert TOKENIZER.decode(tokens).endswith(rendered)
    answer = create(client, messages, temperature=0, max_tokens=30).choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None and answer.message.content
    # and the conversation goes on after the answer
    messages += [answer.message.model_dump(exclude_none=True), {"role": "user", "content": "Thanks!"}]
    assert create(client, messages, temperature=0, max_tokens=5).choices[0].finish_reason in (
        "stop",
        "length",
    )


def test_auto_calls_when_the_model_starts_a_call(client: openai.OpenAI) -> None:
    """auto is free text until <|python_start|>; a bias makes the model start one at once."""
    bias = {str(PYTHON_START): 100}
    [result] = create(client, tool_choice="auto", logit_bias=bias, seed=4).choices
    assert result.finish_reason == "tool_calls" and result.message.content is None
    check_call(
        result.message.tool_calls[0].function.name, result.message.tool_calls[0].function.arguments, "auto"
    )
    plain = create(client, tool_choice="auto", temperature=0, max_tokens=20).choices[0]  # no call: text
    assert plain.message.tool_calls is None and plain.message.content
    assert plain.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_none_never_calls_even_when_the_model_would(client: openai.OpenAI, stream: bool) -> None:
    bias = {str(PYTHON_START): 100}  # auto would call at once (above)
    for seed in range(3):
        response = create(
            client, tool_choice="none", logit_bias=bias, seed=seed, max_tokens=20, stream=stream
        )
        if stream:
            chunks = [c for c in response if c.choices]
            assert not any(c.choices[0].delta.tool_calls for c in chunks)
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        else:
            [result] = response.choices
            assert result.message.tool_calls is None and result.finish_reason in ("stop", "length")


def test_logprobs_cover_the_call_tokens_streamed_and_not(client: openai.OpenAI) -> None:
    common = {"tool_choice": "required", "temperature": 0, "logprobs": True, "top_logprobs": 2}
    completion = create(client, **common)
    entries = completion.choices[0].logprobs.content
    assert len(entries) == completion.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 for e in entries)
    chunks = list(create(client, stream=True, stream_options={"include_usage": True}, **common))
    streamed = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)
    assert chunks[-1].usage.completion_tokens == len(entries)


def test_tool_messages_without_tools_in_the_request_are_rendered(client: openai.OpenAI) -> None:
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
    ]
    answer = client.chat.completions.create(model="demo", messages=messages, max_tokens=5, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")


CALL = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
BAD = [
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools.0.function.name"),
    ({"tools": [TOOLS[1], TOOLS[1]]}, "tools.1.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, None),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"properties": {"x": {"type": "foo"}}}},
                }
            ]
        },
        "tools.0.function.parameters",
    ),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, None),
    ({"tools": [{"type": "function", "function": {"name": "f", "extra": 1}}]}, "tools.0.function.extra"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": NAMED}, "tool_choice"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "c1", "content": "x"}]}, "messages.1.tool_call_id"),
    ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "messages.1.tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [CALL]}]}, "messages.1.tool_calls"),
    (
        {
            "messages": [
                *ASK,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "c2", "content": "x"},
            ]
        },
        "messages.2.tool_call_id",
    ),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}]}, "messages.0.tool_calls"),
    (
        {
            "messages": [
                *ASK,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{x"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "x"},
            ]
        },
        "messages.1.tool_calls.0",
    ),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_tool_inputs_are_400s_naming_the_field(http: httpx.Client, body: dict, param: str | None) -> None:
    response = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param if param else error["param"].startswith("tools.0.function.parameters")


def test_the_calculator_runs_only_without_tools() -> None:
    """nanochat's calculator (SamplingParams.tools) stays as it was for a request without tools."""
    defaults = SamplingDefaults(max_tokens=16)
    plain = ChatCompletionRequest.model_validate({"messages": ASK}).to_sampling_params(defaults)
    assert plain.tools and plain.constraint is None
    for choice in ("auto", "required", "none"):
        body = ChatCompletionRequest.model_validate({"messages": ASK, "tools": TOOLS, "tool_choice": choice})
        params = tool_params(body, TOKENIZER, body.to_sampling_params(defaults))
        assert not params.tools
        assert (params.constraint is None) == (choice == "none")
