"""POST /tokenize and /detokenize (vLLM's shapes) on real servers: the ids the generation routes run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from nanochat.tokenizer import Tokenizer
from tests.servers import DEMO_MODEL

if TYPE_CHECKING:
    from tests.servers import Server

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
KEY = "tokenize-test-key"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_directory(DEMO_MODEL)


def test_tokenize_a_prompt_as_completions_does(http, base_url, tokenizer) -> None:
    body = http.post("/tokenize", json={"model": "demo", "prompt": "The LORD said"}).raise_for_status().json()
    expected = tokenizer.encode("The LORD said", prepend=tokenizer.get_bos_token_id())
    assert body == {"count": len(expected), "max_model_len": body["max_model_len"], "tokens": expected}
    assert body["max_model_len"] == 256  # the demo model's context
    plain = http.post("/tokenize", json={"prompt": "The LORD said", "add_special_tokens": False}).json()
    assert plain["tokens"] == expected[1:]
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        completion = client.completions.create(model="demo", prompt="The LORD said", max_tokens=1)
    assert completion.usage.prompt_tokens == body["count"]


def test_tokenize_a_chat_as_chat_completions_does(http, base_url, tokenizer) -> None:
    body = http.post("/tokenize", json={"messages": HELLO, "add_generation_prompt": True}).json()
    assert body["tokens"] == tokenizer.chat_prompt(HELLO)
    assert body["tokens"][-1] == tokenizer.encode_special("<|assistant_start|>")
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        completion = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=1)
    assert completion.usage.prompt_tokens == body["count"]


def test_detokenize_round_trip(http, tokenizer) -> None:
    text = "In the beginning, café 你好"
    tokens = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert http.post("/detokenize", json={"model": "demo", "tokens": tokens}).json() == {"prompt": text}
    assert http.post("/detokenize", json={"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/detokenize", {"tokens": [1, 2, 2048]}, 400, "tokens.2"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
        ("/detokenize", {"tokens": ["a"]}, 400, "tokens.0"),
        ("/tokenize", {}, 400, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": HELLO}, 400, "prompt"),
        ("/tokenize", {"messages": HELLO, "add_generation_prompt": False}, 400, "add_generation_prompt"),
        ("/tokenize", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages.0.role"),
        ("/tokenize", {"messages": []}, 400, "messages"),
        ("/tokenize", {"prompt": "a", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests(http, path, body, status, param) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"] or "model") == param, error


def test_routes_are_in_the_openapi_schema(http) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert "/tokenize" in paths and "/detokenize" in paths


@pytest.fixture(scope="module")
def keyed_url(start_server: Callable[..., Server]) -> str:
    return start_server({"NANOCHAT_API_KEY": KEY}).url


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_behind_the_api_key(keyed_url, path) -> None:
    body = {"prompt": "hi"} if path == "/tokenize" else {"tokens": [1]}
    with httpx.Client(base_url=keyed_url, timeout=60) as http:
        assert http.post(path, json=body).status_code == 401
        assert http.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
