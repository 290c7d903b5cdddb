"""The base install serves: `python -m app` with every non-base library made unimportable (what
`pip install .` without extras leaves out) starts, answers a chat request, and where the classifier or the
guardrail needs scikit-learn says in one line which extra to install, never with a traceback.

A module-level import of a training, load-testing, browser, cloud or tracks library anywhere on the
serving path fails these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.cold_start import stop
from tests.servers import wait_for_part

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO_ROOT / "models" / "demo"
TIMEOUT_S = 180  # only bounds a hang: loads are slow on shared cores
# top-level modules of the extras (pyproject.toml) and of the learning tracks
NOT_BASE = (
    *("pyarrow", "matplotlib", "wandb", "datasets", "transformers", "peft", "accelerate"),  # training, hf
    *("locust", "selenium", "schemathesis", "openai"),  # load tests, browsers, test clients
    *("cdktf", "cdktf_cdktf_provider_google", "constructs", "functions_framework"),  # infra
    *("grafana_foundation_sdk", "promql_parser"),  # dashboards and their tests
    *("sklearn", "skops"),  # the guardrail extra: these servers run without it
    "tracks",  # the learning tracks: the service never imports them
)
EXTRA_HINT = "pip install 'nanochat-service[guardrail]'"
# A `sitecustomize` module that puts the import system's finders behind one that finds none of the
# BASE_INSTALL_BLOCKED modules, exactly as if they were not installed (an import raises ModuleNotFoundError,
# find_spec answers None): in `python -m app` and in every process it starts (the classifier's workers)
SITECUSTOMIZE = """
import os, sys
BLOCKED = set(os.environ["BASE_INSTALL_BLOCKED"].split(","))
class BaseInstallOnly:
    def __init__(self, finders):
        self.finders = finders
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None
    def find_distributions(self, context=None):  # installed packages' metadata (llguidance reads its own)
        for finder in self.finders:
            if hasattr(finder, "find_distributions"):
                for dist in finder.find_distributions(context):
                    if dist.metadata["Name"].replace("-", "_").lower() not in BLOCKED:
                        yield dist
    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()
sys.meta_path[:] = [BaseInstallOnly(list(sys.meta_path))]
assert all(name not in sys.modules for name in BLOCKED)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path: Path, **env: str) -> tuple[str, subprocess.Popen, Path]:
    port = free_port()
    log_path = tmp_path / "server.log"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_") and k not in ("HOST", "PORT")
    }
    environ.update(
        NANOCHAT_CHECKPOINT=str(DEMO_MODEL),
        NANOCHAT_THREADS="1",
        NANOCHAT_LOG_FORMAT="text",
        PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT)]),
        PYTHONUNBUFFERED="1",
        BASE_INSTALL_BLOCKED=",".join(NOT_BASE),
        **env,
    )
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=environ, stdout=log, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", process, log_path


def wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the server was not ready after {TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def test_the_base_install_serves_chat_and_names_the_classifier_extra(tmp_path: Path) -> None:
    url, process, log_path = start(tmp_path)  # the guardrail off, the classifier on (the defaults)
    try:
        wait_ready(url, process, log_path)
        body = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4}
        chat = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT_S)
        assert chat.status_code == 200, chat.text
        assert chat.json()["usage"]["completion_tokens"] > 0
        assert wait_for_part(url, "classifier", TIMEOUT_S)["state"] == "failed"  # it loads after /ready
        classify = httpx.post(
            f"{url}/v1/classify", json={"input": "The compiler crashed again."}, timeout=TIMEOUT_S
        )
        assert classify.status_code == 503, classify.text
        assert EXTRA_HINT in classify.json()["error"]["message"]
    finally:
        stop(process)
    log = log_path.read_text()
    assert EXTRA_HINT in log
    assert "Traceback" not in log, log


def test_a_guardrail_without_scikit_learn_stops_the_service_with_the_extra_to_install(tmp_path: Path) -> None:
    _, process, log_path = start(tmp_path, NANOCHAT_GUARDRAIL="block", NANOCHAT_CLASSIFIER="")
    try:
        status = process.wait(timeout=TIMEOUT_S)
    finally:
        stop(process)
    log = log_path.read_text()
    assert status == 3, log  # on_load_failure=exit: the model (here the guardrail) failed to load
    assert "the guardrail failed to load" in log and EXTRA_HINT in log, log
    assert "Traceback" not in log, log
