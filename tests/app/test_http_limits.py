"""The HTTP edge (app/http_limits.py and BodyLimit): every client hears its 413, and slow or huge clients
are bounded. Real `python -m app` servers (and one gunicorn) on 127.0.0.1, real clients; no test asserts
how long anything took, only that a bound was enforced before a generous deadline."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import select
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
import requests

from tests.servers import GUNICORN, Gunicorn, launch_gunicorn, wait_for

if TYPE_CHECKING:
    from tests.servers import Server

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60  # for a limit of a few seconds: only a server that never enforces it fails
SIZES = {"1.1MB": 1_100_000, "30MB": 30_000_000}
CONCURRENCY = 8


def chat_body(size: int) -> bytes:
    """A chat request of `size` bytes of JSON (one long user message)."""
    head, tail = '{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"', '"}]}'
    return (head + "a" * (size - len(head) - len(tail)) + tail).encode()


# ---- item 1: a 413 reaches every client ------------------------------------------------------------
def _httpx(url: str, body: bytes, path: Path) -> tuple[int, str]:
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                   timeout=DEADLINE_S)  # fmt: skip
    return r.status_code, r.json()["error"]["code"]


def _requests(url: str, body: bytes, path: Path) -> tuple[int, str]:
    r = requests.post(f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"},
                      timeout=DEADLINE_S)  # fmt: skip
    return r.status_code, r.json()["error"]["code"]


def _urllib(url: str, body: bytes, path: Path) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return response.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["code"]


def _curl(url: str, body: bytes, path: Path) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", "content-type: application/json",
         "--data-binary", f"@{path}", f"{url}/v1/chat/completions"],
        capture_output=True, timeout=DEADLINE_S, check=True,
    )  # fmt: skip
    text, status = done.stdout.decode().rsplit("\n", 1)
    return int(status), json.loads(text)["error"]["code"]


CLIENTS = {"httpx": _httpx, "requests": _requests, "urllib": _urllib, "curl": _curl}


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, Path]]:
    folder = tmp_path_factory.mktemp("bodies")
    out = {}
    for label, size in SIZES.items():
        body = chat_body(size)
        path = folder / f"{label}.json"
        path.write_bytes(body)
        out[label] = (body, path)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_hears_its_413(
    base_url: str, bodies: dict[str, tuple[bytes, Path]], client: str, size: str
) -> None:
    """Today the server answered and closed with the body unread: the kernel reset the connection and
    urllib (and others, by luck) saw a connection error instead of the 413."""
    if client == "curl" and shutil.which("curl") is None:
        pytest.skip("no curl")
    body, path = bodies[size]
    call = CLIENTS[client]
    results = [call(base_url, body, path) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        results += list(pool.map(lambda _: call(base_url, body, path), range(CONCURRENCY)))
    assert results == [(413, "body_too_large")] * len(results)


@pytest.mark.integration
@pytest.mark.parametrize("size", SIZES)
def test_the_openai_clients_hear_the_413_without_retrying(base_url: str, size: str) -> None:
    """The SDKs retry connection errors: a reset 413 made AsyncOpenAI upload a 30 MB body three times and
    then raise APIConnectionError. Now each call is one upload answered 413, sync and async, at
    concurrency 8."""
    text = "a" * SIZES[size]
    sent = []
    messages = [{"role": "user", "content": text}]

    def sync_call(_: object) -> int:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", timeout=DEADLINE_S,
                               http_client=httpx.Client(event_hooks={"request": [sent.append]}))  # fmt: skip
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="m", messages=messages, max_tokens=1)
        return raised.value.status_code

    async def on_request(request: httpx.Request) -> None:
        sent.append(request)

    async def async_calls() -> list[int]:
        http_client = httpx.AsyncClient(event_hooks={"request": [on_request]})
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", timeout=DEADLINE_S,
                                    http_client=http_client)  # fmt: skip

        async def one() -> int:
            try:
                await client.chat.completions.create(model="m", messages=messages, max_tokens=1)
            except openai.APIStatusError as e:
                return e.status_code
            except openai.APIConnectionError:
                return -1
            return 200

        first = await one()  # sequentially, then CONCURRENCY at once
        return [first, *await asyncio.gather(*(one() for _ in range(CONCURRENCY)))]

    statuses = [sync_call(None)]
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses += list(pool.map(sync_call, range(CONCURRENCY)))
    statuses += asyncio.run(async_calls())
    assert statuses == [413] * len(statuses)
    assert len(sent) == len(statuses)  # no retries


@pytest.mark.integration
def test_a_413_leaves_the_connection_usable(base_url: str) -> None:
    """The body was read to its end, so the connection serves the next request."""
    with httpx.Client(base_url=base_url, timeout=DEADLINE_S) as client:
        assert client.post("/v1/chat/completions", content=chat_body(1_100_000)).status_code == 413
        assert client.get("/health").status_code == 200
        assert client.post("/v1/chat/completions", content=chat_body(1_100_000)).status_code == 413


@pytest.mark.integration
def test_a_client_that_waits_for_100_continue_is_answered_at_once(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=DEADLINE_S) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 30000000\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
        status, headers, body = read_response(sock)
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert headers.get("connection") == "close"


# ---- item 6: slow and huge clients are bounded ------------------------------------------------------
def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (with a Content-Length) from `sock`; (0, {}, b"") if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def connect(server: Server | Gunicorn) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=DEADLINE_S)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def edge_server(start_server: Callable[..., Server]) -> Server:
    """Short header and body timeouts, so that the tests wait little (the deadlines stay generous)."""
    return start_server({"NANOCHAT_HEADER_TIMEOUT_S": "1", "NANOCHAT_BODY_TIMEOUT_S": "2"}, wait="health")


@pytest.mark.integration
def test_a_head_over_the_limit_is_answered_431(edge_server: Server) -> None:
    with connect(edge_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 431
    assert json.loads(body)["error"]["code"] == "header_too_large"
    assert headers.get("connection") == "close"
    assert "limit hit" in edge_server.log()


@pytest.mark.integration
def test_a_huge_header_is_cut_before_it_costs_memory(edge_server: Server) -> None:
    """Today a 256 MB header was read whole (RSS +337 MB). Now the server closes the connection once the
    head passes the limit: sending 64 MB fails, and the server's memory stays put."""
    before = rss_kb(edge_server.process.pid)
    chunk = b"a" * (1 << 20)
    sent = 0
    with connect(edge_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with pytest.raises(OSError):  # reset or broken pipe, once the server has closed
            while sent < (64 << 20):
                sock.sendall(chunk)
                sent += len(chunk)
    assert sent < (64 << 20)
    assert rss_kb(edge_server.process.pid) - before < 32 * 1024


@pytest.mark.integration
def test_a_head_dribbled_a_byte_at_a_time_is_cut(edge_server: Server) -> None:
    """Slowloris: a byte every 0.2 s would hold the connection forever; the head must arrive within
    NANOCHAT_HEADER_TIMEOUT_S (1 s here), else 408 and the connection closes."""
    with connect(edge_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + DEADLINE_S
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                sock.sendall(b"X")
                time.sleep(0.2)
        # the 408 may be lost to the reset caused by the bytes sent after it: what counts is the cut
    assert time.monotonic() < deadline
    assert "did not arrive within 1 s" in edge_server.log()


@pytest.mark.integration
def test_a_slow_head_gets_408(edge_server: Server) -> None:
    with connect(edge_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        status, _, body = read_response(sock)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.integration
def test_a_connection_that_sends_nothing_is_closed(edge_server: Server) -> None:
    with connect(edge_server) as sock:
        assert sock.recv(1024) == b""  # closed by the server, not timed out by us


@pytest.mark.integration
def test_a_body_dribbled_a_byte_at_a_time_gets_408(edge_server: Server) -> None:
    with connect(edge_server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
        sock.settimeout(0.2)
        status = 0
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                sock.sendall(b" ")
                status, headers, body = read_response(sock)
                break
            except TimeoutError:
                continue
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert headers.get("connection") == "close"


@pytest.fixture(scope="module")
def capped_server(start_server: Callable[..., Server]) -> Server:
    return start_server({"NANOCHAT_MAX_CONNECTIONS": "4"}, wait="health")


@pytest.mark.integration
def test_connections_past_the_cap_get_503(capped_server: Server) -> None:
    """Four connections busy sending their heads hold the cap; a fifth request is answered 503 (JSON, with
    Retry-After) and its connection closed, and the server logs the limit."""
    busy = [connect(capped_server) for _ in range(4)]
    try:
        for sock in busy:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # a head in progress: not idle
        with connect(capped_server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(sock)
        assert status == 503
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert headers.get("retry-after") == "1" and headers.get("connection") == "close"
        assert "NANOCHAT_MAX_CONNECTIONS=4" in capped_server.log()
    finally:
        for sock in busy:
            sock.close()


@pytest.mark.integration
def test_idle_connections_make_room_for_new_ones(capped_server: Server) -> None:
    """Idle keep-alive connections (a load balancer keeps many) do not lock new clients out: past the cap,
    one of them is closed and the new request served."""
    idle = [connect(capped_server) for _ in range(4)]
    try:
        for sock in idle:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
        with connect(capped_server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
        readable, _, _ = select.select(idle, [], [], DEADLINE_S)
        assert any(sock.recv(1) == b"" for sock in readable)  # closed by the server
    finally:
        for sock in idle:
            sock.close()


# ---- the same under gunicorn --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    if not GUNICORN.exists():
        pytest.skip("gunicorn is not installed in this environment")
    env = {"NANOCHAT_WORKERS": "1", "NANOCHAT_HEADER_TIMEOUT_S": "1", "NANOCHAT_BODY_TIMEOUT_S": "2",
           "NANOCHAT_MAX_HEADER_BYTES": "8192"}  # fmt: skip
    server = launch_gunicorn(tmp_path_factory.mktemp("gunicorn"), env)
    try:
        wait_for(server, "health")  # READY_TIMEOUT_S: a start-up on busy cores
        yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_gunicorn_workers_enforce_the_same_limits(gunicorn_server: Gunicorn) -> None:
    with connect(gunicorn_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        assert read_response(sock)[0] == 431
    with connect(gunicorn_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        assert read_response(sock)[0] == 408
    body = chat_body(30_000_000)
    assert _urllib(gunicorn_server.url, body, Path()) == (413, "body_too_large")
