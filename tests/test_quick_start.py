"""The README's quick start, as a new user runs it: `make run` in a fresh copy of the repository (its tracked
and unignored files, as a clone has them, no .venv) creates the virtual environment with the serving
install only, serves the demo model, and the README's curl command gets a chat reply.

Also the torch build `scripts/install_torch.sh` picks on each kind of machine (DRY_RUN=1 prints its pip
command): the stand-in for `nvidia-smi` is a real program that succeeds (`true`) or fails (`false`), and
the CPU index is a real HTTP server on 127.0.0.1 or a closed port.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
INSTALL_TORCH = REPO_ROOT / "scripts" / "install_torch.sh"
INSTALL_AND_START_S = 1200  # only bounds a hang: a fresh venv (torch included) on shared, loaded cores
REQUEST_TIMEOUT_S = 300
# what `make setup` adds for developers and `make run` must not install
NOT_IN_THE_SERVING_INSTALL = ("selenium", "locust", "cdktf", "sklearn", "transformers", "pyarrow", "wandb")


def readme_block(heading: str, index: int) -> str:
    """The `index`-th fenced code block under the README's `heading`."""
    text = README.read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|python)?\n(.*?)```", section, flags=re.S)
    return blocks[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_copy(destination: Path) -> Path:
    """The files a clone of this working tree has: tracked (as they are now) and untracked, unignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def user_env(**extra: str) -> dict[str, str]:
    """This environment without the service's settings or a virtual environment of ours."""
    drop = ("HOST", "PORT", "VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    ours = ("NANOCHAT_", "STRESS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours) and k not in drop}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "/.venv" not in p)
    return {**env, **extra}


@pytest.mark.slow
@pytest.mark.integration
def test_the_readme_quick_start_serves_a_chat_reply_from_a_fresh_clone(tmp_path: Path) -> None:
    if not shutil.which("make") or not shutil.which("curl"):
        pytest.skip("needs make and curl (Debian: apt-get install -y make curl)")
    quick_start = readme_block("## Quick start", 0)
    assert quick_start.splitlines()[0].split("#")[0].strip() == "make run", quick_start
    curl = readme_block("## Quick start", 1)
    assert "127.0.0.1:8000" in curl and curl.startswith("curl ")

    clone = fresh_copy(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    port = free_port()
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=user_env(PORT=str(port), NANOCHAT_LOG_FORMAT="text"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server it starts: one process group to stop
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + INSTALL_AND_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"make run exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
        reply = subprocess.run(
            ["bash", "-c", curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
            capture_output=True,
            text=True,
            timeout=REQUEST_TIMEOUT_S,
        )
        assert reply.returncode == 0, reply.stderr
        body = httpx.Response(200, content=reply.stdout).json()
        assert body["object"] == "chat.completion", body
        assert body["usage"]["completion_tokens"] > 0
        assert body["choices"][0]["message"]["content"].strip()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    log = log_path.read_text()
    assert "install_torch:" in log, log[-4000:]
    python = clone / ".venv" / "bin" / "python"
    probe = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    installed = subprocess.run(
        [str(python), "-c", probe, *NOT_IN_THE_SERVING_INSTALL], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert installed == "[]", f"make run installed developer packages: {installed}"
    torch_build = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert torch_build[1] == "None", f"a CUDA build of torch on a machine without a GPU: {torch_build}"
    assert (clone / ".venv" / ".installed-run").exists() and not (clone / ".venv" / ".installed").exists()


# ---- scripts/install_torch.sh: which build -----------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_index() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 standing in for PyTorch's CPU index (it answers /torch/)."""

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.rstrip("/") == "/whl/cpu/torch"
            self.send_response(200 if found else 404)
            self.end_headers()
            self.wfile.write(b"<html><body>torch</body></html>" if found else b"")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    finally:
        server.shutdown()
        server.server_close()


def torch_choice(**env: str) -> str:
    """The pip command install_torch.sh prints in a dry run (with a Python that has no torch)."""
    python = shutil.which("python3")
    result = subprocess.run(
        [str(INSTALL_TORCH), python],
        env=user_env(DRY_RUN="1", TORCH_VERSION="9.9.9", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="the CPU-build choice is made on Linux")
def test_without_a_gpu_the_cpu_build_comes_from_the_cpu_index(cpu_index: str) -> None:
    choice = torch_choice(NVIDIA_SMI=shutil.which("false"), TORCH_CPU_INDEX=cpu_index)
    assert choice.endswith(f"pip install torch==9.9.9+cpu --extra-index-url {cpu_index}"), choice


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="the CPU-build choice is made on Linux")
def test_without_a_gpu_or_the_cpu_index_the_cpu_build_comes_from_the_registries() -> None:
    closed = f"http://127.0.0.1:{free_port()}/whl/cpu"  # nothing listens there
    choice = torch_choice(NVIDIA_SMI=shutil.which("false"), TORCH_CPU_INDEX=closed)
    assert "unreachable" in choice and choice.endswith("pip install torch==9.9.9+cpu"), choice


def test_with_an_nvidia_gpu_the_default_cuda_build(cpu_index: str) -> None:
    choice = torch_choice(NVIDIA_SMI=shutil.which("true"), TORCH_CPU_INDEX=cpu_index)
    assert "NVIDIA GPU" in choice and choice.endswith("pip install torch==9.9.9"), choice


def test_torch_pip_args_override_the_choice(cpu_index: str) -> None:
    args = "--index-url https://download.pytorch.org/whl/cu128"
    choice = torch_choice(NVIDIA_SMI=shutil.which("false"), TORCH_CPU_INDEX=cpu_index, TORCH_PIP_ARGS=args)
    assert choice.endswith(f"pip install torch==9.9.9 {args}"), choice
