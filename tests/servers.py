"""Real servers for the tests of the service and its benchmarks (a pytest plugin that tests/conftest.py
loads): `python -m app` in a subprocess on a free 127.0.0.1 port.

- `base_url`: one session-wide server on the bundled demo model (context 256 tokens), ready.
- `start_server(env, wait="ready")`: more servers with their own settings (a tiny queue, API keys, an
  unloadable checkpoint, ...); all are stopped at the end of the session.
- `wait_for_part(url, "classifier")`: the optional parts load after `/ready` says 200; this waits for one.
- `slow_checkpoint`: a random-weight model (8 layers, width 512, context 1024) with the demo tokenizer:
  about 10 ms a token on one CPU thread, so a request can be kept in flight for seconds. Its output head is
  zero, so greedy decoding repeats token 0 and never stops early: a request runs to max_tokens.

Each server runs in a temporary folder (no `.env` from the repository is read) with the caller's
`NANOCHAT_*`, `HOST` and `PORT` variables removed, and logs to a file shown when something fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch

from nanochat.checkpoint import save_checkpoint
from nanochat.gpt import GPT, GPTConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO_ROOT / "models" / "demo"
READY_TIMEOUT_S = 180  # only bounds a hang: loads are slow on two shared cores
STOP_TIMEOUT_S = 20
BASE_ENV = {
    "NANOCHAT_CHECKPOINT": str(DEMO_MODEL),
    "NANOCHAT_THREADS": "1",  # several servers share two cores; the demo model is faster on one thread
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": str(REPO_ROOT),
}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    ready_codes: list[str] = field(default_factory=list)  # /ready answers seen while starting, in order

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status, failing the test if the process is still running after `timeout` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready_code(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "ready"
    return response.json()["error"]["code"]


def wait_for(server: Server, until: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll until /ready is 200 (`until="ready"`) or /health is 200 (`until="health"`), recording every
    /ready answer in `server.ready_codes`; fail with the log if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited ({server.process.returncode}):\n{server.log()[-3000:]}")
        try:
            if until == "health" and httpx.get(f"{server.url}/health", timeout=10).status_code == 200:
                return
            code = _ready_code(httpx.get(f"{server.url}/ready", timeout=10))
            if not server.ready_codes or server.ready_codes[-1] != code:
                server.ready_codes.append(code)
            if until == "ready" and code == "ready":
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server was not {until} after {timeout} s:\n{server.log()[-3000:]}")
        time.sleep(0.02)


def wait_for_part(url: str, part: str, timeout: float = READY_TIMEOUT_S) -> dict:
    """Poll /stats until the optional `part` (`classifier`, `guardrail`), which loads after /ready may say
    200, has left "loading"; its status (`state`, `reason`, `model`)."""
    deadline = time.monotonic() + timeout
    while (status := httpx.get(f"{url}/stats", timeout=10).json()["parts"][part])["state"] == "loading":
        if time.monotonic() > deadline:
            pytest.fail(f"the {part} was still loading after {timeout} s")
        time.sleep(0.05)
    return status


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its NANOCHAT_*, HOST and PORT, plus BASE_ENV, plus `env`."""
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_") and k not in ("HOST", "PORT")
    }
    return {**inherited, **BASE_ENV, **(env or {})}


def launch(tmp_dir: Path, env: dict[str, str] | None = None) -> Server:
    """Start `python -m app` (not waiting); `env` adds to or overrides BASE_ENV."""
    port = free_port()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / "server.log"
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=tmp_dir, env=server_env(env), stdout=log, stderr=subprocess.STDOUT
        )
    return Server(f"http://127.0.0.1:{port}", process, log_path)


GUNICORN = Path(sys.executable).parent / "gunicorn"


@dataclass
class Gunicorn(Server):
    """`gunicorn -c app/gunicorn.conf.py` in a process group of its own (as under systemd or a terminal)."""

    def workers(self) -> set[int]:
        """The master's live child processes (its workers), from /proc."""
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                children.add(int(stat.parent.name))
        return children

    def stop(self) -> None:
        """SIGTERM to the whole group (a drain), then SIGKILL if it has not ended within STOP_TIMEOUT_S."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def launch_gunicorn(
    tmp_dir: Path, env: dict[str, str] | None = None, app: str | None = None, path: Path | None = None
) -> Gunicorn:
    """Start gunicorn with the production config on a free port (not waiting); `env` as for `launch`; `app`
    replaces the config's wsgi_app (a "module:factory" found on `path`)."""
    port = free_port()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    environment = server_env({"PORT": str(port), **(env or {})})
    if path is not None:
        environment["PYTHONPATH"] = os.pathsep.join([environment["PYTHONPATH"], str(path)])
    command = [str(GUNICORN), "-c", str(REPO_ROOT / "app" / "gunicorn.conf.py"), *([app] if app else [])]
    log_path = tmp_dir / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_dir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Gunicorn(f"http://127.0.0.1:{port}", process, log_path)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """gunicorn(env=None, app=None, path=None) -> a started gunicorn, not yet ready (see `launch_gunicorn`);
    killed at the end of the test if still running."""
    if not GUNICORN.exists():
        pytest.skip("gunicorn is not installed in this environment")
    started: list[Gunicorn] = []

    def start(
        env: dict[str, str] | None = None, app: str | None = None, path: Path | None = None
    ) -> Gunicorn:
        server = launch_gunicorn(tmp_path / f"gunicorn-{len(started)}", env, app, path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """start_server(env=None, wait="ready" | "health" | None) -> Server; stopped at the session's end."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None, wait: str | None = "ready") -> Server:
        server = launch(tmp_path_factory.mktemp("server"), env)
        servers.append(server)
        if wait:
            wait_for(server, wait)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def clean_env() -> Callable[..., dict[str, str]]:
    """clean_env(extra) -> the environment the test servers run with (for other commands, e.g. gunicorn)."""
    return server_env


@pytest.fixture(scope="session")
def api_server(start_server: Callable[..., Server]) -> Server:
    """The demo model with default settings."""
    return start_server()


@pytest.fixture(scope="session")
def base_url(api_server: Server) -> str:
    return api_server.url


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint slow enough (about 10 ms a token) to keep requests in flight."""
    directory = tmp_path_factory.mktemp("slow-model")
    config = GPTConfig(sequence_len=1024, vocab_size=2048, n_layer=8, n_head=4, n_kv_head=4, n_embd=512)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    save_checkpoint(directory, 1, model.state_dict(), {"model_config": config.to_dict()})
    for name in ("tokenizer.pkl", "token_bytes.pt"):
        shutil.copy(DEMO_MODEL / name, directory / name)
    return directory
