"""Smaller edge cases, each against a real `python -m app` on 127.0.0.1: HEAD probes,
two Authorization headers, the openai JS SDK's CORS preflight, secrets and huge URLs in the access log,
and a non-streamed request whose client went away (499)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.servers import Server

KEY = "sk-live-authorization-secret"
ORIGIN = "https://chat.example.com"
DEADLINE_S = 60
# what the openai JS SDK (v4/v5) sends from a browser, besides Authorization and Content-Type
STAINLESS = ("x-stainless-os", "x-stainless-lang", "x-stainless-package-version", "x-stainless-runtime",
             "x-stainless-runtime-version", "x-stainless-arch", "x-stainless-retry-count",
             "x-stainless-timeout")  # fmt: skip


@pytest.fixture(scope="module")
def keyed_server(start_server: Callable[..., Server]) -> Server:
    return start_server({"NANOCHAT_API_KEYS": KEY, "NANOCHAT_CORS_ORIGINS": ORIGIN})


def access_lines(server: Server, route: str) -> list[dict]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{") and '"logger": "app.access"' in line:
            record = json.loads(line)
            if record.get("route") == route:
                lines.append(record)
    return lines


@pytest.mark.integration
def test_head_health_is_200(base_url: str) -> None:
    response = httpx.head(f"{base_url}/health")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.integration
def test_two_authorization_headers_are_400(keyed_server: Server) -> None:
    """Which one would count? A proxy may have added one: the request is refused, in the one error shape."""
    for second in (KEY, "wrong"):
        response = httpx.post(
            f"{keyed_server.url}/v1/chat/completions",
            headers=[("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {second}")],
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            timeout=DEADLINE_S,
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "duplicate_header"
    one = httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert one.status_code == 200


@pytest.mark.integration
def test_the_openai_js_preflight_is_allowed(keyed_server: Server) -> None:
    requested = ["authorization", "content-type", *STAINLESS]
    response = httpx.options(
        f"{keyed_server.url}/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ",".join(requested),
        },
    )
    assert response.status_code == 200, response.text
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert set(requested) <= allowed
    assert response.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.options(
        f"{keyed_server.url}/v1/chat/completions",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-stainless-os",
        },
    )
    assert refused.status_code == 400


@pytest.mark.integration
def test_the_access_log_keeps_no_secret_and_no_huge_url(keyed_server: Server) -> None:
    secrets = {"api_key": "sk-query-secret-1", "token": "tok-secret-2", "access_token": "at-secret-3",
               "key": "k-secret-4"}  # fmt: skip
    params = {**secrets, "limit": "5", "padding": "p" * 60_000}
    response = httpx.get(
        f"{keyed_server.url}/v1/models", params=params, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    deadline = time.monotonic() + DEADLINE_S
    while not (mine := [r for r in access_lines(keyed_server, "/v1/models") if r.get("request_id") == rid]):
        assert time.monotonic() < deadline  # this request's line, not an earlier one of the same route
        time.sleep(0.05)
    log = keyed_server.log()
    for secret in [*secrets.values(), KEY]:
        assert secret not in log
    url = mine[0]["httpRequest"]["requestUrl"]
    assert "api_key=REDACTED" in url and "limit=5" in url
    assert len(url) < 3000


@pytest.mark.integration
def test_a_request_whose_client_left_is_499(
    start_server: Callable[..., Server], slow_checkpoint: Path
) -> None:
    """A non-streamed chat on the slow model (about 10 ms a token) whose client gives up after 1 s: the
    access log and the request metrics say 499, not 200."""
    server = start_server({"NANOCHAT_CHECKPOINT": str(slow_checkpoint), "NANOCHAT_MAX_BATCH": "2"})
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 900, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=1)
    deadline = time.monotonic() + DEADLINE_S
    while not (lines := access_lines(server, "/v1/chat/completions")):
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    assert lines[-1]["httpRequest"]["status"] == 499
    assert lines[-1]["finish_reason"] == "cancelled"
    counted = {
        line.split('status_class="')[1][:3]
        for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line.startswith("nanochat_requests_total{") and 'route="/v1/chat/completions"' in line
    }
    assert counted == {"4xx"}
