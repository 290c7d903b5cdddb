"""What the service shows to whom on real servers: `/metrics` on a port of its own
(NANOCHAT_METRICS_PORT; 404 on the app's port), served by `python -m app` itself and, under gunicorn, by the
master with every worker's values merged; `/stats` behind the API key; `/docs`, `/redoc` and `/openapi.json`
behind NANOCHAT_DOCS; and an empty user turn refused with a 400 as OpenAI does."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.contract import METRICS_PATH
from tests.servers import Gunicorn, free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"
KEY = "exposure-test-key"
HELLO = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 2}
DEADLINE_S = 300  # only bounds a hang: workers load slowly on shared, loaded cores
REQUEST_S = 120  # each request's timeout: only bounds a hang


def samples(text: str) -> dict[str, float]:
    """Unlabelled (or summed) sample values by name."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


@pytest.fixture(scope="module")
def locked(start_server):
    """Production-like exposure: metrics on their own port, API keys, no docs."""
    metrics_port = free_port()
    server = start_server(
        {
            "NANOCHAT_METRICS_PORT": str(metrics_port),
            "NANOCHAT_API_KEYS": KEY,
            "NANOCHAT_DOCS": "false",
            "NANOCHAT_CLASSIFIER": "",  # not under test: spare the shared cores
        }
    )
    server.metrics_url = f"http://127.0.0.1:{metrics_port}"
    return server


def test_metrics_leave_the_app_port_for_their_own(locked) -> None:
    error = error_of(httpx.get(f"{locked.url}{METRICS_PATH}", timeout=REQUEST_S), 404)
    assert error["code"] == "not_found" and "metrics" in error["message"]
    key = {"Authorization": f"Bearer {KEY}"}
    chat = httpx.post(f"{locked.url}/v1/chat/completions", json=HELLO, headers=key, timeout=REQUEST_S)
    assert chat.status_code == 200, chat.text
    scrape = httpx.get(f"{locked.metrics_url}{METRICS_PATH}", timeout=REQUEST_S)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    values = samples(scrape.text)
    assert values["nanochat_ready"] == 1 and values["nanochat_requests_total"] >= 1
    openmetrics = httpx.get(
        f"{locked.metrics_url}{METRICS_PATH}", headers={"Accept": "application/openmetrics-text"}, timeout=120
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    # nothing else there
    assert httpx.get(f"{locked.metrics_url}/v1/models", timeout=REQUEST_S).status_code == 404


def test_stats_wants_the_api_key(locked) -> None:
    assert error_of(httpx.get(f"{locked.url}/stats", timeout=REQUEST_S), 401)["code"] == "invalid_api_key"
    wrong = httpx.get(f"{locked.url}/stats", headers={"Authorization": "Bearer nope"}, timeout=REQUEST_S)
    assert error_of(wrong, 401)["code"] == "invalid_api_key"
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    stats = httpx.get(f"{locked.url}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=REQUEST_S)
    assert stats.status_code == 200 and stats.json()["state"] == "ready"
    for probe in ("/health", "/ready"):  # the probes stay open: orchestrators send no key
        assert httpx.get(f"{locked.url}{probe}", timeout=REQUEST_S).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_are_a_setting(locked, base_url: str, path: str) -> None:
    assert error_of(httpx.get(f"{locked.url}{path}", timeout=REQUEST_S), 404)["code"] == "not_found"
    # on by default, for local use
    assert httpx.get(f"{base_url}{path}", timeout=REQUEST_S).status_code == 200


def test_metrics_stay_on_the_app_port_by_default(base_url: str) -> None:
    assert "nanochat_ready" in samples(httpx.get(f"{base_url}{METRICS_PATH}", timeout=REQUEST_S).text)
    # no keys set: open, as before
    assert httpx.get(f"{base_url}/stats", timeout=REQUEST_S).status_code == 200


# ---- empty user turns -------------------------------------------------------------------------------
EMPTY_CONTENTS = {
    "null": None,
    "empty": "",
    "blank": " \n\t ",
    "no-parts": [],
    "empty-part": [{"type": "text", "text": ""}],
    "blank-parts": [{"type": "text", "text": " "}, {"type": "text", "text": "\n"}],
}


@pytest.mark.parametrize("content", EMPTY_CONTENTS.values(), ids=EMPTY_CONTENTS.keys())
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/chat/completions"])
def test_an_empty_user_turn_is_a_400(base_url: str, route: str, content) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    messages.append({"role": "user", "content": content})
    response = httpx.post(
        f"{base_url}{route}", json={"messages": messages, "max_tokens": 2}, timeout=REQUEST_S
    )
    error = error_of(response, 400)
    assert error["param"] == "messages.2.content" and "a user message needs text" in error["message"]


def test_the_openai_client_gets_bad_request_for_a_null_user_turn(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": None}])  # type: ignore[misc]
    assert caught.value.body["param"] == "messages.0.content"
    # an assistant turn without content (it called tools, in OpenAI's API) and an empty system turn stay fine
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Again"},
    ]
    assert client.chat.completions.create(model="demo", messages=messages, max_tokens=2).choices  # type: ignore[arg-type]


# ---- gunicorn: the master serves the merged metrics ---------------------------------------------------
def test_under_gunicorn_the_master_serves_every_workers_metrics(gunicorn: Callable[..., Gunicorn]) -> None:
    metrics_port = free_port()
    server = gunicorn(
        {"NANOCHAT_WORKERS": "2", "NANOCHAT_METRICS_PORT": str(metrics_port), "NANOCHAT_CLASSIFIER": ""}
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}{METRICS_PATH}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # both workers ready: their batch slots (16 each) add up in the merged gauge
            assert server.process.poll() is None, server.log()[-3000:]
            try:
                if samples(httpx.get(metrics_url, timeout=REQUEST_S).text).get("nanochat_batch_slots") == 32:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"2 workers not ready:\n{server.log()[-3000:]}"
            time.sleep(0.2)
        assert (
            error_of(httpx.get(f"{server.url}{METRICS_PATH}", timeout=REQUEST_S), 404)["code"] == "not_found"
        )
        for _ in range(4):
            assert httpx.post(f"{server.url}/v1/chat/completions", json=HELLO, timeout=REQUEST_S)
        values = samples(httpx.get(metrics_url, timeout=REQUEST_S).text)
        assert values["nanochat_ready"] == 1  # livemin over both workers
        assert values["nanochat_finished_requests_total"] == 4  # whichever workers served them
    finally:
        server.stop()
