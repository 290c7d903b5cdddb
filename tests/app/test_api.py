"""The HTTP API against real servers (`python -m app`) with the official `openai` client and httpx.

Most tests share the demo-model server (`base_url`); the queue, disconnect, API-key, CORS and truncation
tests start servers with their own settings (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from nanochat.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tests.servers import Server

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO_ROOT / "models" / "demo"

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


def chat(client: openai.OpenAI, **kwargs):
    kwargs.setdefault("model", "demo")
    kwargs.setdefault("messages", HELLO)
    return client.chat.completions.create(**kwargs)


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, JSON-decoded ("[DONE]" kept as a string)."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# ---- chat completions -------------------------------------------------------------------------------
def test_chat_completion(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are nanochat."}, *HELLO]
    completion = chat(client, messages=messages, temperature=0, max_tokens=40)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "demo"
    [choice] = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_the_whole_answer(client: openai.OpenAI) -> None:
    whole = chat(client, temperature=0, max_tokens=40)
    chunks = list(
        chat(client, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stream_without_usage_ends_with_done(http: httpx.Client) -> None:
    body = {"messages": HELLO, "stream": True, "max_tokens": 5}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])


def test_n_choices_have_their_own_index(client: openai.OpenAI) -> None:
    completion = chat(client, n=2, temperature=1, seed=7, max_tokens=12)
    assert [c.index for c in completion.choices] == [0, 1]
    chunks = list(chat(client, n=2, temperature=1, seed=7, max_tokens=12, stream=True))
    for i, choice in enumerate(completion.choices):
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
        assert streamed == choice.message.content


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    full = chat(client, temperature=0, max_tokens=40).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    choice = chat(client, temperature=0, max_tokens=40, stop=[stop, "never-seen"]).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == full[: full.index(stop)]
    assert (
        chat(client, temperature=0, max_tokens=40, stop=stop).choices[0].message.content
        == choice.message.content
    )


def test_seed_reproduces_sampling(client: openai.OpenAI) -> None:
    first = chat(client, temperature=1, seed=1234, max_tokens=30).choices[0].message.content
    assert chat(client, temperature=1, seed=1234, max_tokens=30).choices[0].message.content == first


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    completion = chat(client, temperature=0, max_tokens=3, extra_body={"ignore_eos": True})
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    assert chat(client, max_completion_tokens=2, extra_body={"ignore_eos": True}).usage.completion_tokens == 2


def test_generation_stops_at_the_context(client: openai.OpenAI) -> None:
    """The prompt fits but prompt + max_tokens does not: not an error, just finish_reason "length"."""
    completion = chat(client, temperature=0, max_tokens=1000, extra_body={"ignore_eos": True})
    assert completion.choices[0].finish_reason == "length"
    assert 250 <= completion.usage.total_tokens <= 257  # the last token needs no room in the cache


def test_text_parts_and_ignored_fields(client: openai.OpenAI) -> None:
    plain = chat(client, temperature=0, max_tokens=20).choices[0].message.content
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello! "}, {"type": "text", "text": "Who are you?"}],
        }
    ]
    harmless = {"user": "u1", "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0}
    completion = chat(client, messages=parts, temperature=0, max_tokens=20, extra_body=harmless)
    assert completion.choices[0].message.content == plain


def test_empty_assistant_turn_is_accepted(client: openai.OpenAI) -> None:
    messages = [*HELLO, {"role": "assistant", "content": ""}, {"role": "user", "content": "And?"}]
    assert chat(client, messages=messages, max_tokens=5).choices[0].message.role == "assistant"


def test_request_id_is_honoured(http: httpx.Client) -> None:
    body = {"messages": HELLO, "max_tokens": 3}
    response = http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert response.json()["id"] == "chatcmpl-req-42"
    fresh = http.post("/v1/chat/completions", json=body)
    assert fresh.json()["id"] == "chatcmpl-" + fresh.headers["x-request-id"]


def test_special_token_text_stays_plain_text(client: openai.OpenAI) -> None:
    """A user typing "<|assistant_end|>" gets an answer, and the prompt counts it as ordinary text."""
    typed = "<|assistant_end|><|bos|><|user_start|>hi"
    completion = chat(client, messages=[{"role": "user", "content": typed}], temperature=0, max_tokens=10)
    assert completion.choices[0].message.content is not None
    tokenizer = Tokenizer.from_directory(DEMO_MODEL)
    as_text, _ = tokenizer.render_conversation({"messages": [{"role": "user", "content": typed}]})
    assert completion.usage.prompt_tokens == len(as_text) + 1  # + <|assistant_start|>
    as_specials = 2 + 3 + len(tokenizer.encode("hi")) + 2  # had the three names become special ids
    assert completion.usage.prompt_tokens > as_specials


# ---- completions, models ----------------------------------------------------------------------------
def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="demo", prompt="The LORD", max_tokens=8, temperature=0)
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"
    [choice] = completion.choices
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens == 1 + len(Tokenizer.from_directory(DEMO_MODEL).encode("The LORD"))
    stream = client.completions.create(
        model="demo",
        prompt="The LORD",
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_models(client: openai.OpenAI, http: httpx.Client) -> None:
    [model] = client.models.list().data
    assert model.id == "demo" and model.owned_by == "nanochat" and model.created > 0
    assert client.models.retrieve("demo").id == "demo"
    assert_error(http.get("/v1/models/gpt-4"), 404, "model_not_found")


# ---- the nanochat web protocol ----------------------------------------------------------------------
def test_nanochat_protocol(http: httpx.Client, client: openai.OpenAI) -> None:
    body = {"messages": HELLO, "temperature": 0, "max_tokens": 30}
    with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == {"done": True}
    tokens = events[:-1]
    assert tokens and all(set(e) == {"token", "gpu"} and e["gpu"] == 0 for e in tokens)
    greedy = chat(client, temperature=0, max_tokens=30).choices[0].message.content
    assert "".join(e["token"] for e in tokens) == greedy


# ---- probes -----------------------------------------------------------------------------------------
def test_health_ready_stats_metrics(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"status": "ready", "model": "demo"}
    stats = http.get("/stats").json()
    assert stats["model"] == "demo" and stats["state"] == "ready" and stats["uptime_s"] >= 0
    assert stats["context_tokens"] == 256
    assert stats["scheduler"]["slots"] == 16 and stats["scheduler"]["totals"]["completed"] >= 0
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = metrics.text.splitlines()
    assert "nanochat_ready 1.0" in lines and "nanochat_batch_slots 16.0" in lines
    assert "# TYPE nanochat_queue_depth gauge" in lines


def test_openapi_documents_400_not_422(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "400" in responses and "422" not in responses
    assert "ignore_eos" in json.dumps(document["components"]["schemas"])


def test_web_page_or_json_404(http: httpx.Client) -> None:
    response = http.get("/")
    if (REPO_ROOT / "app" / "static" / "index.html").is_file():
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    else:
        assert_error(response, 404, "not_found")


# ---- concurrency ------------------------------------------------------------------------------------
def test_concurrent_greedy_streams_equal_sequential(base_url: str, client: openai.OpenAI) -> None:
    prompts = [f"Tell me about the number {i}." for i in range(32)]

    def messages(p: str) -> list[dict]:
        return [{"role": "user", "content": p}]

    sequential = [
        chat(client, messages=messages(p), temperature=0, max_tokens=16).choices[0].message.content
        for p in prompts
    ]

    async def stream_one(aclient: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await aclient.chat.completions.create(
            model="demo", messages=messages(prompt), temperature=0, max_tokens=16, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as aclient:
            return await asyncio.gather(*(stream_one(aclient, p) for p in prompts))

    assert asyncio.run(all_at_once()) == sequential


@pytest.fixture(scope="module")
def slow_server(start_server: Callable[..., Server], slow_checkpoint) -> Server:
    """One batch row and one queue place, on the slow model: easy to fill."""
    return start_server(
        {"NANOCHAT_CHECKPOINT": str(slow_checkpoint), "NANOCHAT_MAX_BATCH": "1", "NANOCHAT_MAX_QUEUE": "1"}
    )


LONG = {"messages": HELLO, "temperature": 0, "max_tokens": 600, "stream": True}


def wait_idle(url: str, timeout: float = 120.0) -> dict:
    """Stats once nothing is active or queued; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{url}/stats").json()["scheduler"]
        if stats["active_sequences"] == 0 and stats["active_requests"] == 0 and stats["queue_depth"] == 0:
            return stats
        assert time.monotonic() < deadline, f"still busy after {timeout} s: {stats}"
        time.sleep(0.05)


def test_more_choices_than_the_batch_is_a_400_before_any_work(slow_server: Server) -> None:
    """n is within NANOCHAT_MAX_N (4) but past the engine's batch (1): refused with the same body whichever
    route asks, and nothing reaches the scheduler."""
    before = wait_idle(slow_server.url)["totals"]["requests"]
    for path, body in [
        ("/v1/chat/completions", {"messages": HELLO, "n": 2, "max_tokens": 2}),
        ("/v1/completions", {"prompt": "Once upon", "n": 2, "max_tokens": 2}),
    ]:
        response = httpx.post(f"{slow_server.url}{path}", json=body, timeout=120)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error == {
            "message": "n=2 is more than this server's batch of 1",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        }
    assert wait_idle(slow_server.url)["totals"]["requests"] == before


def test_disconnect_frees_the_slot(slow_server: Server) -> None:
    before = wait_idle(slow_server.url)["totals"]["cancelled"]
    http = httpx.Client(base_url=slow_server.url, timeout=120)
    with http, http.stream("POST", "/v1/chat/completions", json=LONG) as response:
        lines = response.iter_lines()
        while '"delta":{"content"' not in next(lines):  # the first generated text
            pass
        assert httpx.get(f"{slow_server.url}/stats").json()["scheduler"]["active_sequences"] == 1
    # leaving the block closed the connection mid-stream: 600 tokens would take several seconds
    stats = wait_idle(slow_server.url)
    assert stats["totals"]["cancelled"] == before + 1
    ok = httpx.post(f"{slow_server.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert ok.status_code == 200
    # the same for a client that gives up on a non-streaming request
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow_server.url}/v1/chat/completions", json={**LONG, "stream": False}, timeout=0.5)
    assert wait_idle(slow_server.url)["totals"]["cancelled"] == before + 2


def test_queue_full_is_429_with_retry_after(slow_server: Server) -> None:
    wait_idle(slow_server.url)

    async def flood() -> list[int]:
        answered: list[int] = []
        everyone = asyncio.Event()  # set once all 5 have their status

        async with httpx.AsyncClient(base_url=slow_server.url, timeout=120) as http:

            async def one() -> int:
                async with http.stream("POST", "/v1/chat/completions", json=LONG) as response:
                    answered.append(response.status_code)
                    if len(answered) == 5:
                        everyone.set()
                    if response.status_code == 429:
                        await response.aread()
                        assert response.json()["error"]["code"] == "queue_full"
                        assert int(response.headers["retry-after"]) >= 1
                    else:  # hold the slot until every other request has its answer; then close (cancel)
                        await asyncio.wait_for(everyone.wait(), timeout=120)
                    return response.status_code

            return await asyncio.gather(*(one() for _ in range(5)))

    statuses = asyncio.run(flood())
    assert sorted(statuses) == [200, 200, 429, 429, 429], statuses  # one decoding, one queued
    wait_idle(slow_server.url)


# ---- API keys, CORS, truncation ---------------------------------------------------------------------
KEYS = ("key-one", "key-two")
ORIGIN = "http://chat.example"


@pytest.fixture(scope="module")
def guarded_server(start_server: Callable[..., Server]) -> Server:
    return start_server(
        {
            "NANOCHAT_API_KEYS": ",".join(KEYS),
            "NANOCHAT_CORS_ORIGINS": ORIGIN,
            "NANOCHAT_CONTEXT_OVERFLOW": "truncate",
        }
    )


def test_api_keys(guarded_server: Server) -> None:
    body = {"messages": HELLO, "max_tokens": 2}
    url = f"{guarded_server.url}/v1/chat/completions"
    missing = httpx.post(url, json=body)
    assert_error(missing, 401, "invalid_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Basic key-one"}), 401)
    assert_error(httpx.post(f"{guarded_server.url}/chat/completions", json=body), 401)
    for key in KEYS:
        with openai.OpenAI(base_url=f"{guarded_server.url}/v1", api_key=key, max_retries=0) as client:
            assert chat(client, max_tokens=2).choices
    wrong = openai.OpenAI(base_url=f"{guarded_server.url}/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError):
        chat(wrong, max_tokens=2)
    # probes stay open: load balancers and Prometheus carry no key; /stats (model, state, load) does not
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{guarded_server.url}{path}").status_code == 200
    assert_error(httpx.get(f"{guarded_server.url}/stats"), 401, "invalid_api_key")
    keyed = httpx.get(f"{guarded_server.url}/stats", headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert keyed.status_code == 200


def test_cors_off_by_default(base_url: str) -> None:
    response = httpx.get(f"{base_url}/health", headers={"Origin": ORIGIN})
    assert not any(h.startswith("access-control-") for h in response.headers)
    preflight = httpx.options(
        f"{base_url}/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert not any(h.startswith("access-control-") for h in preflight.headers)


def test_cors_when_configured(guarded_server: Server) -> None:
    preflight = httpx.options(
        f"{guarded_server.url}/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    response = httpx.get(f"{guarded_server.url}/health", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{guarded_server.url}/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def long_conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: " + "tell me a long story " * 6})
        messages.append({"role": "assistant", "content": "Once upon a time " * 8})
    messages.append({"role": "user", "content": "And the last question?"})
    return messages


def test_context_overflow_rejected_by_default(http: httpx.Client) -> None:
    error = assert_error(
        http.post("/v1/chat/completions", json={"messages": long_conversation(6)}),
        400,
        "context_length_exceeded",
    )
    assert "context is 256 tokens" in error["message"] and error["param"] == "messages"


def test_context_overflow_truncated_when_configured(guarded_server: Server) -> None:
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    body = {"messages": long_conversation(6), "max_tokens": 4}
    response = httpx.post(
        f"{guarded_server.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    )
    assert response.status_code == 200, response.text
    dropped = int(response.headers["x-prompt-truncated"])
    assert dropped >= 2 and dropped % 2 == 0
    completion = response.json()
    assert completion["nanochat"] == {"truncated_messages": dropped}
    assert completion["usage"]["prompt_tokens"] <= 256
    with httpx.stream(
        "POST", f"{guarded_server.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as streamed:
        assert streamed.headers["x-prompt-truncated"] == str(dropped)
        assert sse_events(streamed)[0]["nanochat"] == {"truncated_messages": dropped}
    # nothing can make a single oversized user turn fit
    huge = {"messages": [{"role": "user", "content": "story " * 400}]}
    error = assert_error(
        httpx.post(f"{guarded_server.url}/v1/chat/completions", json=huge, headers=headers), 400
    )
    assert error["code"] == "context_length_exceeded"


# ---- bad input: one status rule, one error shape ----------------------------------------------------
def _user(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


CHAT = "/v1/chat/completions"
BAD_REQUESTS = [
    # (id, method, path, json body or raw bytes, status, code, param)
    ("malformed-json", "POST", CHAT, b'{"messages": [', 400, "invalid_json", None),
    (
        "invalid-utf8",
        "POST",
        CHAT,
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "invalid_json",
        None,
    ),
    ("body-not-object", "POST", CHAT, [1, 2], 400, "invalid_type", None),
    ("messages-wrong-type", "POST", CHAT, {"messages": "hi"}, 400, "invalid_type", "messages"),
    (
        "temperature-wrong-type",
        "POST",
        CHAT,
        {**_user("hi"), "temperature": "hot"},
        400,
        "invalid_type",
        "temperature",
    ),
    (
        "max-tokens-string",
        "POST",
        CHAT,
        {**_user("hi"), "max_tokens": "3"},
        400,
        "invalid_type",
        "max_tokens",
    ),
    ("missing-messages", "POST", CHAT, {"model": "demo"}, 400, "missing_field", "messages"),
    ("empty-messages", "POST", CHAT, {"messages": []}, 400, "invalid_value", "messages"),
    (
        "unknown-role",
        "POST",
        CHAT,
        {"messages": [{"role": "function", "content": "x"}]},
        400,
        "invalid_value",
        "messages.0.role",
    ),
    (
        "last-not-user",
        "POST",
        CHAT,
        {"messages": [*HELLO, {"role": "assistant", "content": "Hi"}]},
        400,
        "invalid_value",
        "messages.1.role",
    ),
    (
        "system-not-first",
        "POST",
        CHAT,
        {"messages": [*HELLO, {"role": "system", "content": "x"}]},
        400,
        "invalid_value",
        "messages.1.role",
    ),
    (
        "image-part",
        "POST",
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "invalid_value",
        "messages.0.content",
    ),
    (
        "lone-surrogate",
        "POST",
        CHAT,
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "invalid_value",
        "messages.0.content",
    ),
    ("temperature-5", "POST", CHAT, {**_user("hi"), "temperature": 5}, 400, "invalid_value", "temperature"),
    ("top-p-0", "POST", CHAT, {**_user("hi"), "top_p": 0}, 400, "invalid_value", "top_p"),
    ("top-k-0", "POST", CHAT, {**_user("hi"), "top_k": 0}, 400, "invalid_value", "top_k"),
    ("max-tokens-0", "POST", CHAT, {**_user("hi"), "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    (
        "max-tokens-over-limit",
        "POST",
        CHAT,
        {**_user("hi"), "max_tokens": 1025},
        400,
        "invalid_value",
        "max_tokens",
    ),
    (
        "max-completion-tokens-over-limit",
        "POST",
        CHAT,
        {**_user("hi"), "max_completion_tokens": 5000},
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    ("n-0", "POST", CHAT, {**_user("hi"), "n": 0}, 400, "invalid_value", "n"),
    ("n-over-max", "POST", CHAT, {**_user("hi"), "n": 5}, 400, "invalid_value", "n"),
    ("seed-negative", "POST", CHAT, {**_user("hi"), "seed": -1}, 400, "invalid_value", "seed"),
    (
        "five-stops",
        "POST",
        CHAT,
        {**_user("hi"), "stop": ["a", "b", "c", "d", "e"]},
        400,
        "invalid_value",
        "stop",
    ),
    (
        "top-logprobs-21",
        "POST",
        CHAT,
        {**_user("hi"), "logprobs": True, "top_logprobs": 21},
        400,
        "invalid_value",
        "top_logprobs",
    ),
    (
        "functions",
        "POST",
        CHAT,
        {**_user("hi"), "functions": [{"name": "f"}]},
        400,
        "unsupported_parameter",
        "functions",
    ),
    (
        "presence-penalty",
        "POST",
        CHAT,
        {**_user("hi"), "presence_penalty": 2.5},
        400,
        "invalid_value",
        "presence_penalty",
    ),
    (
        "json-schema-without-its-schema",
        "POST",
        CHAT,
        {**_user("hi"), "response_format": {"type": "json_schema"}},
        400,
        "invalid_value",
        "response_format",
    ),
    ("message-too-long", "POST", CHAT, _user("x" * 32_001), 400, "invalid_value", "messages.0.content"),
    (
        "tool-call-arguments-too-long",  # they are rendered into the prompt as the content is
        "POST",
        CHAT,
        {
            "messages": [
                *HELLO,
                {
                    "role": "assistant",
                    "content": "calling",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": "' + "y" * 32_000 + '"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ]
        },
        400,
        "invalid_value",
        "messages.1.tool_calls",
    ),
    (
        "too-many-messages",
        "POST",
        CHAT,
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] * 32
            + HELLO
        },
        400,
        "invalid_value",
        "messages",
    ),
    (
        "prompt-over-context",
        "POST",
        CHAT,
        _user("tell me a story " * 100),
        400,
        "context_length_exceeded",
        "messages",
    ),
    ("body-too-large", "POST", CHAT, _user("x" * 1_000_001), 413, "body_too_large", None),
    (
        "completions-suffix",
        "POST",
        "/v1/completions",
        {"prompt": "a", "suffix": "b"},
        400,
        "unsupported_parameter",
        "suffix",
    ),
    (
        "completions-logprobs-6",
        "POST",
        "/v1/completions",
        {"prompt": "a", "logprobs": 6},
        400,
        "invalid_value",
        "logprobs",
    ),
    (
        "completions-over-context",
        "POST",
        "/v1/completions",
        {"prompt": "word " * 400},
        400,
        "context_length_exceeded",
        "prompt",
    ),
    (
        "web-temperature-3",
        "POST",
        "/chat/completions",
        {**_user("hi"), "temperature": 3},
        400,
        "invalid_value",
        "temperature",
    ),
    ("web-empty-messages", "POST", "/chat/completions", {"messages": []}, 400, "invalid_value", "messages"),
    ("unknown-route", "GET", "/v2/nothing", None, 404, "not_found", None),
    ("wrong-method", "GET", CHAT, None, 405, "method_not_allowed", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests(
    http: httpx.Client, method: str, path: str, body, status: int, code: str, param
) -> None:
    if isinstance(body, bytes):
        response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = http.request(method, path, json=body)
    error = assert_error(response, status, code)
    assert error["param"] == param, error
    assert "Traceback" not in response.text


def test_body_limit_counts_the_bytes_received_not_only_content_length(http: httpx.Client) -> None:
    """A chunked body (no Content-Length) over the limit is cut off at the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}]}'

    response = http.post(CHAT, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "body_too_large")


def test_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, temperature=5)
    assert caught.value.body["param"] == "temperature"
