"""Tests for `nanochat chat --url` (nanochat/remote_chat.py, nanochat/chat_loop.py): the real command
against a small OpenAI-style server run here (it records every request, so the history each turn sends is
visible, and answers as a test scripts it), and end to end against the service on the demo model."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nanochat.cli import EXIT_ERROR, EXIT_USAGE, main
from tests.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY_VARIABLES = ("NANOCHAT_API_KEY", "OPENAI_API_KEY")
HANG_LIMIT_S = 120  # bounds a hang only


def sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def chunk(**delta) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


class FakeServer:
    """An OpenAI-style server on 127.0.0.1: `GET /v1/models` lists `models`; each `POST
    /v1/chat/completions` takes the next scripted answer (`replies`), by default a streamed "reply N".
    `requests` records (method, path, Authorization header, JSON body) of each request."""

    def __init__(self) -> None:
        self.models = ["fake-model", "other-model"]
        self.replies: list[str | tuple] = []
        self.requests: list[tuple[str, str, str | None, dict | None]] = []
        self.release = threading.Event()  # ends a "hang" answer
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, self.headers.get("Authorization"), None))
                self.answer(200, "application/json", json.dumps({"data": [{"id": m} for m in fake.models]}))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, self.headers.get("Authorization"), body))
                turn = sum(1 for r in fake.requests if r[0] == "POST")
                reply = fake.replies.pop(0) if fake.replies else f"reply {turn}"
                if isinstance(reply, tuple):  # (status, error): an error answer
                    status, error = reply
                    self.answer(status, "application/json", json.dumps({"error": error}))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(sse(chunk(role="assistant", content="")))
                if reply == "hang":  # one piece, then nothing until released
                    self.wfile.write(sse(chunk(content="partial")))
                    self.wfile.flush()
                    fake.release.wait(HANG_LIMIT_S)
                    return
                if reply.startswith("error:"):  # a piece, then an error event, no [DONE]
                    self.wfile.write(sse(chunk(content="half ")))
                    message = reply.removeprefix("error:")
                    self.wfile.write(sse({"error": {"message": message, "code": "deadline_exceeded"}}))
                    return
                first, _, rest = reply.partition(" ")
                for piece in (first, f" {rest}"):  # two pieces: the reply arrives as a stream
                    self.wfile.write(sse(chunk(content=piece)))
                self.wfile.write(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
                self.wfile.write(sse("[DONE]"))

            def answer(self, status: int, content_type: str, text: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def chat_bodies(self) -> list[dict]:
        return [body for method, _, _, body in self.requests if method == "POST"]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(autouse=True)
def no_key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def chat(capsys, monkeypatch, stdin: str, *argv: str) -> tuple[int, str, str]:
    """`nanochat chat ARGV` in this process with `stdin` typed in: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["chat", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **extra}


def run_cli(*argv: str, stdin: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanochat.cli", "chat", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(**env),
        timeout=HANG_LIMIT_S * 3,
    )


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- against the recording server -----------------------------------------------------------------------


def test_each_turn_sends_the_history_and_reset_empties_it(fake: FakeServer, capsys, monkeypatch) -> None:
    options = ["--system", "Be brief.", "--temperature", "0", "--top-k", "5", "--max-tokens", "7"]
    code, out, err = chat(
        capsys, monkeypatch, "first\nsecond\n/reset\nthird\nclear\nfourth\n/quit\nnever\n",
        "--url", f"{fake.url}/v1/", "--api-key", "k1", *options,
    )  # fmt: skip
    assert code == 0, err
    assert err == ""
    assert out.startswith(f"nanochat fake-model at {fake.url}.\nType /reset")
    for turn in (1, 2, 3, 4):
        assert f"Assistant: reply {turn}\n" in out

    system = {"role": "system", "content": "Be brief."}
    bodies = fake.chat_bodies()
    assert [body["messages"] for body in bodies] == [
        [system, {"role": "user", "content": "first"}],
        [
            system,
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply 1"},
            {"role": "user", "content": "second"},
        ],
        [system, {"role": "user", "content": "third"}],  # /reset keeps only the system message
        [system, {"role": "user", "content": "fourth"}],  # so does clear
    ]
    for body in bodies:
        assert body["stream"] is True
        assert body["model"] == "fake-model"  # the first that GET /v1/models lists
        assert (body["max_tokens"], body["temperature"], body["top_k"]) == (7, 0.0, 5)
    # --url with a trailing /v1/ reaches the same routes; the key goes with every request
    assert [(method, path, auth) for method, path, auth, _ in fake.requests] == [
        ("GET", "/v1/models", "Bearer k1"),
        *[("POST", "/v1/chat/completions", "Bearer k1")] * 4,
    ]


def test_model_flag_and_key_from_the_environment(fake: FakeServer, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    code, _, err = chat(capsys, monkeypatch, "hi\n", "--url", fake.url, "--model", "other-model")
    assert code == 0, err
    assert fake.chat_bodies()[0]["model"] == "other-model"
    assert {auth for _, _, auth, _ in fake.requests} == {"Bearer sk-openai"}

    monkeypatch.setenv("NANOCHAT_API_KEY", "nk")  # the service's own variable wins
    fake.requests.clear()
    chat(capsys, monkeypatch, "hi\n", "--url", fake.url)
    assert {auth for _, _, auth, _ in fake.requests} == {"Bearer nk"}


def test_an_error_drops_the_turn_and_the_chat_goes_on(fake: FakeServer, capsys, monkeypatch) -> None:
    too_long = {"message": "the prompt is 900 tokens; the context is 256", "code": "context_length_exceeded"}
    fake.replies = [(400, too_long), "error:the deadline passed", (503, "warming up"), "fine thanks"]
    code, out, err = chat(capsys, monkeypatch, "one\ntwo\nthree\nfour\n", "--url", fake.url)
    assert code == 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith("nanochat: the server answered 400: the prompt is 900 tokens")
    assert lines[0].endswith("type /reset to start a new conversation")
    assert lines[1] == "nanochat: the server stopped the reply: the deadline passed"
    assert lines[2] == "nanochat: the server answered 503: warming up"
    assert "Assistant: half \n" in out  # what had arrived stays on the screen
    assert "Assistant: fine thanks\n" in out
    # the failed turns are not in the history the last turn sends
    assert fake.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "four"}]


def test_ctrl_c_stops_the_reply_and_returns_to_the_prompt(fake: FakeServer) -> None:
    fake.replies = ["hang"]
    process = subprocess.Popen(
        [sys.executable, "-m", "nanochat.cli", "chat", "--url", fake.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        # Python raises KeyboardInterrupt on SIGINT only if the signal was not ignored when it started
        # (a suite run in the background ignores it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(iter(lambda: process.stdout.read(1), "")))
        reader.start()
        process.stdin.write("tell me\n")
        process.stdin.flush()
        deadline = time.monotonic() + HANG_LIMIT_S
        while "partial" not in "".join(output):
            assert process.poll() is None and time.monotonic() < deadline, "".join(output)
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        process.stdin.write("again\n/quit\n")
        process.stdin.close()
        process.wait(timeout=HANG_LIMIT_S)
        reader.join()
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(output)
    assert process.returncode == 0, err
    assert one_line(err) == "nanochat: reply interrupted; the turn is dropped"
    assert "Assistant: partial\n" in out
    assert "Assistant: reply 2\n" in out
    assert fake.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "again"}]


def test_the_local_chat_takes_the_same_commands(capsys, monkeypatch) -> None:
    stdin = "hello\n/reset\nhi\n/quit\nnever sent\n"
    argv = ["--checkpoint", str(REPO_ROOT / "models" / "demo"), "--max-tokens", "2", "--temperature", "0"]
    code, out, err = chat(capsys, monkeypatch, stdin, *argv)
    assert code == 0, err
    assert "Type /reset to start a new conversation, /quit or Ctrl-D to leave." in out
    assert out.count("New conversation.") == 1
    assert out.count("Assistant:") == 2
    assert out.count("User:") == 4  # /quit ends it: the last line is never read


# --- command-line errors --------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_line_and_exit_1(capsys, monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = chat(capsys, monkeypatch, "hello\n", "--url", url)
    assert code == EXIT_ERROR
    assert out == ""
    line = one_line(err)
    assert line.startswith(f"nanochat: error: cannot reach a server at {url} (")
    assert "`make run`" in line and "`nanochat serve`" in line


NOWHERE = "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--url", NOWHERE, "--checkpoint", "models/demo"], ["--checkpoint cannot go with --url"]),
        (["--url", NOWHERE, "--step", "3", "--device", "cuda"], ["--step, --device cannot go"]),
        (["--url", "127.0.0.1:8000"], ["--url must be an http:// or https:// URL"]),
        ([], ["chat needs --checkpoint", "or --url"]),
        (["--checkpoint", "models/demo", "--model", "demo"], ["--model", "--url"]),
    ],
)
def test_usage_errors(capsys, monkeypatch, argv: list[str], fragments: list[str]) -> None:
    code, out, err = chat(capsys, monkeypatch, "", *argv)
    assert code == EXIT_USAGE
    assert out == ""
    line = one_line(err)
    assert line.startswith("nanochat: error:")
    for fragment in fragments:
        assert fragment in line


def test_help_names_the_remote_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = capsys.readouterr().out
    for text in ("--url", "--api-key", "--model", "NANOCHAT_API_KEY", "/reset", "/quit"):
        assert text in out


# --- end to end against the service ---------------------------------------------------------------------


@pytest.mark.integration
def test_two_turns_with_the_service(base_url: str) -> None:
    result = run_cli(
        "--url", base_url, "--temperature", "0", "--max-tokens", "12",
        stdin="Hello, who are you?\nWhat is 2+3?\n/reset\nHi!\n/quit\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"nanochat demo at {base_url}.")
    replies = [line for line in result.stdout.splitlines() if "Assistant: " in line]
    assert len(replies) == 3, result.stdout
    assert all(line.split("Assistant: ", 1)[1].strip() for line in replies), result.stdout


@pytest.mark.integration
def test_a_server_with_keys_asks_for_one(start_server) -> None:
    server = start_server({"NANOCHAT_API_KEYS": "k1"})
    refused = run_cli("--url", server.url, stdin="hello\n")
    assert refused.returncode == EXIT_ERROR
    line = one_line(refused.stderr)
    assert "401" in line and "missing API key" in line and "--api-key" in line

    for argv, env in ((["--api-key", "k1"], {}), ([], {"NANOCHAT_API_KEY": "k1"})):
        allowed = run_cli("--url", server.url, "--max-tokens", "4", "--temperature", "0", *argv,
                          stdin="hello\n", **env)  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stderr == ""
        assert "Assistant: " in allowed.stdout
