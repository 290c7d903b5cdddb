"""Structured outputs (response_format json_schema / json_object) through the official `openai` client on
a real server with the demo model: the reply always parses and validates, greedy, sampled, streamed, with
n > 1; cut by max_tokens it finishes "length"; unsupported schemas and bad shapes are 400s naming them;
free requests in flight beside constrained ones get the same greedy reply as alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Describe a person as JSON."}]


class Address(BaseModel):
    city: str = Field(max_length=10)
    floor: int = Field(ge=0, le=9)


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    mood: Literal["happy", "sad", "calm"]
    tags: list[Literal["red", "green", "blue"]] = Field(max_length=3)
    home: Address
    ok: bool


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "home": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "floor": {"type": "integer", "minimum": 0, "maximum": 9},
            },
            "required": ["city", "floor"],
            "additionalProperties": False,
        },
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "mood", "tags", "home", "ok"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}


def test_parse_with_a_pydantic_model_greedy(client) -> None:
    completion = client.chat.completions.parse(
        model="demo", messages=ASK, response_format=Person, temperature=0, max_tokens=200
    )
    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)
    assert Person.model_validate_json(choice.message.content) == choice.message.parsed


def test_unconstrained_the_demo_model_writes_no_json(client) -> None:
    completion = client.chat.completions.create(model="demo", messages=ASK, temperature=0, max_tokens=60)
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.choices[0].message.content)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sampled_replies_validate_against_the_schema(client, seed) -> None:
    completion = client.chat.completions.create(
        model="demo", messages=ASK, response_format=FORMAT, temperature=1.0, seed=seed, max_tokens=200, n=2
    )
    assert [c.finish_reason for c in completion.choices] == ["stop", "stop"]
    for choice in completion.choices:
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_streamed_reply_validates(client) -> None:
    text, finish = "", None
    stream = client.chat.completions.create(
        model="demo",
        messages=ASK,
        response_format=FORMAT,
        temperature=0.8,
        seed=5,
        max_tokens=200,
        stream=True,
    )
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "stop"
    Person.model_validate_json(text)


def test_json_object_mode_gives_an_object_and_logprobs_stay_the_models(client) -> None:
    completion = client.chat.completions.create(
        model="demo",
        messages=ASK,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=300,
        logprobs=True,
        top_logprobs=2,
    )
    [choice] = completion.choices
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    assert choice.message.content.startswith("{")
    first = choice.logprobs.content[0]
    assert first.token == "{" and first.top_logprobs[0].token != "{"  # the raw distribution, unmasked


def test_text_format_is_free_text(client) -> None:
    free = client.chat.completions.create(model="demo", messages=ASK, temperature=0, max_tokens=20)
    text = client.chat.completions.create(
        model="demo", messages=ASK, temperature=0, max_tokens=20, response_format={"type": "text"}
    )
    assert text.choices[0].message.content == free.choices[0].message.content


def test_tiny_max_tokens_finishes_length(client) -> None:
    completion = client.chat.completions.create(
        model="demo", messages=ASK, response_format=FORMAT, temperature=0, max_tokens=3
    )
    [choice] = completion.choices
    assert choice.finish_reason == "length" and choice.message.content.startswith("{")


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"$ref": "https://example.com/person.json"}, "https://example.com/person.json"),
        ({"type": "string", "format": "no-such-format"}, "Unknown format: no-such-format"),
        ({"type": "string", "pattern": "(unclosed"}, "unclosed group"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "Unsatisfiable schema"),
    ],
)
def test_unsupported_schema_features_are_400s_naming_them(client, schema, named) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo", messages=ASK, response_format=response_format)
    error = caught.value.body
    assert error["param"] == "response_format.json_schema.schema"
    assert named in error["message"] and "unsupported JSON schema" in error["message"]


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema"}, "response_format"),
        ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x", "shema": {}}}, "response_format"),
        ({"type": "json_object", "extra": 1}, "response_format.extra"),
        ("json_object", "response_format"),
    ],
)
def test_bad_shapes_are_400s_naming_the_field(http, response_format, param) -> None:
    body = {"model": "demo", "messages": ASK, "response_format": response_format}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


def test_free_requests_beside_constrained_ones_get_the_same_greedy_reply(client) -> None:
    prompts = [[{"role": "user", "content": f"Tell me about number {k}."}] for k in range(3)]

    def free(messages):
        reply = client.chat.completions.create(model="demo", messages=messages, temperature=0, max_tokens=40)
        return reply.choices[0].message.content

    def constrained(seed):
        reply = client.chat.completions.create(
            model="demo", messages=ASK, response_format=FORMAT, temperature=1.0, seed=seed, max_tokens=200
        )
        return reply.choices[0]

    alone = [free(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(constrained, seed) for seed in range(5)]
        together = [pool.submit(free, p) for p in prompts]
        assert [f.result() for f in together] == alone
        for choice in (f.result() for f in busy):
            assert choice.finish_reason == "stop"
            Person.model_validate_json(choice.message.content)
