"""Traffic for the Prometheus integration test (test_prometheus_integration.py), with the errors it needs.

`ServiceUser` drives the service under test (NANOCHAT_SERVICE_URL): streamed and whole chat completions,
completions, the nanochat web protocol, and bad input (400); its batch and queue are small, so some requests
are turned away (429). `DeadlineUser` drives a second instance whose request timeout is too short for any
generation (NANOCHAT_DEADLINE_URL), so each of its requests is a 504. Every request names the statuses it
expects; another one is a locust failure, and locust then exits 1. (Run without --host: it would send both
users to one address.)
"""

from __future__ import annotations

import os

from locust import HttpUser, between, task

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


def expect(response, statuses: tuple[int, ...], needle: str | None = None) -> None:
    if response.status_code not in statuses:
        response.failure(f"expected {statuses}, got {response.status_code}: {response.text[:200]}")
    elif response.status_code == statuses[0] and needle is not None and needle not in response.text:
        response.failure(f"{needle!r} not in the response: {response.text[-200:]}")
    else:
        response.success()


class ServiceUser(HttpUser):
    weight = 3
    wait_time = between(0.02, 0.1)
    host = os.environ.get("NANOCHAT_SERVICE_URL")

    def post(self, name: str, path: str, body: dict, needle: str | None = None) -> None:
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            expect(response, (200, 429), needle)

    @task(4)
    def chat_stream(self) -> None:
        body = {
            "messages": HELLO,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self.post("chat stream", "/v1/chat/completions", body, needle="data: [DONE]")

    @task(2)
    def chat(self) -> None:
        self.post("chat", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 16})

    @task(1)
    def completion(self) -> None:
        self.post("completion", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 16})

    @task(1)
    def web_chat(self) -> None:
        self.post("web chat", "/chat/completions", {"messages": HELLO, "max_tokens": 16}, needle='"done"')

    @task(1)
    def bad_input(self) -> None:
        with self.client.post(
            "/v1/chat/completions", json={"messages": []}, name="bad input", catch_response=True
        ) as response:
            expect(response, (400,))


class DeadlineUser(HttpUser):
    weight = 1
    wait_time = between(0.05, 0.2)
    host = os.environ.get("NANOCHAT_DEADLINE_URL")

    @task
    def chat(self) -> None:
        with self.client.post(
            "/v1/chat/completions",
            json={"messages": HELLO, "max_tokens": 64, "ignore_eos": True},  # never done within 1 ms
            name="deadline",
            catch_response=True,
        ) as response:
            expect(response, (504,), "deadline_exceeded")
