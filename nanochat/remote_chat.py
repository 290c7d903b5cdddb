"""`nanochat chat --url`: the terminal chat with a running server, through its OpenAI-compatible API.

`GET /v1/models` at the start (it names the default model and proves the server is there), then one
`POST /v1/chat/completions` with `stream: true` per turn, carrying the whole conversation; the reply's
Server-Sent Events (`data: {...}` lines up to `data: [DONE]`) are printed as they arrive. Standard library
only (urllib), so it works in the base install; it never imports the service.

Errors are one line on stderr. A server that cannot be reached or refuses `/v1/models` ends the command
(`RemoteError`, exit 1). During the chat an error answer (an HTTP status, or an `error` event in the stream),
a lost server or Ctrl-C drops that turn and the chat goes on.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from nanochat.chat_loop import Message, chat_loop

API_KEY_VARIABLES = ("NANOCHAT_API_KEY", "OPENAI_API_KEY")  # the first set one is the default --api-key
START_HINT = "start one with `make run` or `nanochat serve`"
CONNECT_TIMEOUT_S = 30.0  # GET /v1/models
REPLY_TIMEOUT_S = 600.0  # the longest wait for the next event of a reply (a queue, a slow model)


class RemoteError(ValueError):
    """A failure a user can act on, in one line (the CLI prints it; a ValueError of this package)."""


def api_root(url: str) -> str:
    """The server's root from `--url`, given with or without a trailing `/v1` (or `/`); a ValueError for
    anything but an http(s) URL."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be an http:// or https:// URL, got {url!r}")
    path = parts.path.rstrip("/").removesuffix("/v1")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def default_api_key() -> str | None:
    for name in API_KEY_VARIABLES:
        if value := os.environ.get(name, "").strip():
            return value.split(",")[0].strip()  # the server's NANOCHAT_API_KEY may list several
    return None


class ChatClient:
    """The two calls the chat makes to an OpenAI-compatible server at `root` (no trailing `/v1`)."""

    def __init__(self, root: str, api_key: str | None = None) -> None:
        self.root = root
        self.api_key = api_key

    def model_ids(self) -> list[str]:
        """The ids `GET /v1/models` lists, in its order."""
        with self._open("/v1/models", None, CONNECT_TIMEOUT_S) as response:
            try:
                return [model["id"] for model in json.load(response)["data"]]
            except (ValueError, KeyError, TypeError):
                raise RemoteError(f"{self.root}/v1/models did not answer an OpenAI model list") from None

    def stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        """POST /v1/chat/completions with `stream: true`; the reply's text pieces as they arrive. Raises
        RemoteError for an error answer, an `error` event or a stream cut before `[DONE]`."""
        response = self._open("/v1/chat/completions", {**body, "stream": True}, REPLY_TIMEOUT_S)
        with response:
            if response.headers.get_content_type() != "text/event-stream":  # a server that ignored stream
                yield _json_reply(_read_json(response))
                return
            try:
                for raw in response:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:`/`id:` fields
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        return
                    text = _event_text(data)
                    if text:
                        yield text
            except (OSError, http.client.HTTPException) as e:
                raise RemoteError(f"the connection to {self.root} broke during the reply ({e})") from None
        raise RemoteError(f"{self.root} ended the reply without [DONE]")

    def _open(self, path: str, body: dict[str, Any] | None, timeout: float) -> http.client.HTTPResponse:
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.root + path, data=data, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            error = _error_of(e.read()) or e.reason
            raise RemoteError(_error_line(f"the server answered {e.code}", error, e.code)) from None
        except urllib.error.URLError as e:
            raise RemoteError(f"cannot reach a server at {self.root} ({e.reason}); {START_HINT}") from None
        except (OSError, http.client.HTTPException) as e:  # a timeout, a reset, a non-HTTP answer
            raise RemoteError(f"no answer from {self.root}{path} ({e or type(e).__name__})") from None


def _error_line(what: str, error: Any, status: int | None = None) -> str:
    """An error in one line: `what` happened, the server's own message (OpenAI's error shape: a dict with
    `message` and `code`) and what to do about it."""
    message, code = (error.get("message"), error.get("code")) if isinstance(error, dict) else (error, None)
    line = f"{what}: {message}"
    if status == 401 or code == "invalid_api_key":
        line += f"; give its key with --api-key or {API_KEY_VARIABLES[0]}"
    elif code == "context_length_exceeded":
        line += "; type /reset to start a new conversation"
    elif code == "model_not_found":
        line += "; --model picks one of the names GET /v1/models lists"
    return " ".join(line.split())


def _error_of(body: bytes) -> Any:
    """The `error` member of an error answer's JSON body, or None."""
    try:
        return json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None


def _event_text(data: str) -> str:
    """The text of one `data:` event (choice 0's delta); RemoteError for an `error` event."""
    try:
        event = json.loads(data)
    except ValueError:
        raise RemoteError(f"the server sent an event that is not JSON: {data[:200]!r}") from None
    if "error" in event:
        raise RemoteError(_error_line("the server stopped the reply", event["error"]))
    for choice in event.get("choices") or []:
        if choice.get("index", 0) == 0:
            return (choice.get("delta") or {}).get("content") or ""
    return ""


def _read_json(response: http.client.HTTPResponse) -> Any:
    try:
        return json.load(response)
    except ValueError:
        raise RemoteError("the server's answer is neither an event stream nor JSON") from None


def _json_reply(completion: Any) -> str:
    try:
        return completion["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise RemoteError("the server's answer is not a chat completion") from None


def remote_chat(
    root: str,
    api_key: str | None,
    model: str | None,
    system: str | None,
    sampling: dict[str, Any],
) -> int:
    """Chat in the terminal with the server at `root` (`api_root(--url)`); `model` None: the first one it
    lists. `sampling`: the request's sampling fields (max_tokens, temperature, ...). The exit status."""
    client = ChatClient(root, api_key)
    served = client.model_ids()
    model = model or (served[0] if served else None)
    print(f"nanochat {model or '(the default model)'} at {client.root}.")

    def respond(messages: list[Message]) -> str | None:
        body = {**sampling, "messages": messages, **({"model": model} if model else {})}
        pieces: list[str] = []
        try:
            for piece in client.stream_chat(body):
                if not pieces:
                    sys.stdout.write("Assistant: ")
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except RemoteError as e:
            _end_line(pieces)
            print(f"nanochat: {e}", file=sys.stderr)
            return None
        except KeyboardInterrupt:
            _end_line(pieces)
            print("nanochat: reply interrupted; the turn is dropped", file=sys.stderr)
            return None
        if not pieces:
            sys.stdout.write("Assistant: ")
        sys.stdout.write("\n")
        return "".join(pieces)

    return chat_loop(respond, system)


def _end_line(pieces: list[str]) -> None:
    if pieces:
        sys.stdout.write("\n")
    sys.stdout.flush()
