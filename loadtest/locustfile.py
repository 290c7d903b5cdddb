"""Load test users for the nanochat service: `locust -f loadtest/ --host http://127.0.0.1:8000`.

Three kinds of users, mixed by weight:

- `StreamingChatUser` streams `POST /v1/chat/completions` and reads every event to the end;
- `ChatUser` asks for whole (non-streamed) chat completions;
- `ProbeUser` polls `/health` and `/ready` like a load balancer would.

Locust times an HTTP request until its headers arrive, which for a stream is before the first token. So the
chat users time the whole reply themselves and report it as extra entries (request type `LLM`):

| name | response time | response length |
|---|---|---|
| `ttft` | ms from sending to the first content token | – |
| `tpot` | ms per output token after the first (a request with two tokens or more) | – |
| `e2e` | ms from sending to the last byte of the reply | completion tokens |

A failed request (an HTTP error, an error event, a stream cut short) is a failure of `e2e` too, so that
entry's counts are the requests' counts. `loadtest/gate.py` reads these entries.

Settings come from environment variables: `LOADTEST_PROMPTS` (a text file, one prompt per line; default
loadtest/prompts.txt), `LOADTEST_MAX_TOKENS` (64), `LOADTEST_MODEL` (the server's first model),
`LOADTEST_API_KEY` (the app's bearer key) and `LOADTEST_ID_TOKEN` (a Cloud Run identity token, for a
service that is not public).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from _auth import auth_headers  # locust puts this folder on sys.path
from locust import HttpUser, between, constant, task

from app.contract import CHAT_COMPLETIONS_PATH, HEALTH_PATH, READY_PATH

HERE = Path(__file__).resolve().parent
LLM = "LLM"  # request_type of the entries the chat users report themselves
CHAT_PATH = CHAT_COMPLETIONS_PATH


def load_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """Non-empty, non-comment lines of the prompt file."""
    path = Path(path or os.environ.get("LOADTEST_PROMPTS") or HERE / "prompts.txt")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SystemExit(f"loadtest: cannot read the prompts file {path}: {e.strerror}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SystemExit(f"loadtest: the prompts file {path} has no prompts")
    return prompts


def _max_tokens() -> int:
    text = os.environ.get("LOADTEST_MAX_TOKENS", "64")
    if not text.isdigit() or int(text) < 1:
        raise SystemExit(f"loadtest: LOADTEST_MAX_TOKENS must be a positive integer, got {text!r}")
    return int(text)


PROMPTS = load_prompts()
MAX_TOKENS = _max_tokens()


class _LlmUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        self.client.headers.update(auth_headers())
        self.model = os.environ.get("LOADTEST_MODEL") or self._first_model()

    def _first_model(self) -> str:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            try:
                return response.json()["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                response.failure(f"no model in /v1/models (HTTP {response.status_code})")
                return "nanochat"

    def body(self, stream: bool) -> dict:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def report(self, name: str, ms: float, length: int = 0, error: str | None = None) -> None:
        self.environment.events.request.fire(
            request_type=LLM,
            name=name,
            response_time=ms,
            response_length=length,
            exception=RuntimeError(error) if error else None,
            context={},
        )


class StreamingChatUser(_LlmUser):
    weight = 3
    wait_time = between(0.2, 1.0)

    @task
    def stream_chat(self) -> None:
        start = time.perf_counter()
        ttft_ms = None
        tokens = 0
        error = None
        with self.client.post(
            CHAT_PATH,
            json=self.body(stream=True),
            stream=True,
            catch_response=True,
            name=f"{CHAT_PATH} stream",
        ) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
                response.failure(error)
            else:
                done = False
                for line in response.iter_lines():
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = f"error event: {event['error'].get('code', 'unknown')}"
                        break
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                    if ttft_ms is None and any(c.get("delta", {}).get("content") for c in event["choices"]):
                        ttft_ms = (time.perf_counter() - start) * 1000
                if error is None and not done:
                    error = "stream ended without [DONE]"
                if error:
                    response.failure(error)
        e2e_ms = (time.perf_counter() - start) * 1000
        if error is None and ttft_ms is not None:
            self.report("ttft", ttft_ms)
            if tokens >= 2:
                self.report("tpot", (e2e_ms - ttft_ms) / (tokens - 1))
        self.report("e2e", e2e_ms, tokens, error)


class ChatUser(_LlmUser):
    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def chat(self) -> None:
        start = time.perf_counter()
        error, tokens = None, 0
        with self.client.post(CHAT_PATH, json=self.body(stream=False), catch_response=True) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
                response.failure(error)
            else:
                tokens = response.json()["usage"]["completion_tokens"]
        self.report("e2e", (time.perf_counter() - start) * 1000, tokens, error)


class ProbeUser(HttpUser):
    weight = 1
    wait_time = constant(1.0)

    @task
    def probes(self) -> None:
        self.client.get(HEALTH_PATH)
        self.client.get(READY_PATH)
