"""`nanochat serve` / `python -m app`: vLLM's flags, each also an environment variable (the old NANOCHAT_*
names too), all feeding the one Settings object with the flag winning; the request's `model` checked against
the served names (404 `model_not_found` in OpenAI's shape, or any name with NANOCHAT_ACCEPT_ANY_MODEL);
`--max-model-len` capping the context (and refused above the model's); `--memory-limit` refusing a model
that does not fit, in one line before its weights are read; the start-up line and `/stats` saying what the
weights and the KV cache take.

`nanochat serve` is an entry point (pyproject.toml), read from installed metadata: the servers here run with
a metadata folder written from this checkout's pyproject.toml first on the path, so that they test the
checkout's declaration whether or not the environment was installed from it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.__main__ import add_serve_arguments, settings_from_args
from app.config import Settings
from app.lifecycle import EXIT_LOAD_FAILED
from nanochat.checkpoint import load_checkpoint
from nanochat.engine import Engine
from nanochat.memory import format_bytes
from tests.servers import REPO_ROOT, Server, free_port, server_env, wait_for

DEMO = REPO_ROOT / "models" / "demo"
# vLLM's names for these (vllm serve --help), and the variables the older releases of this service read
VLLM_FLAGS = (
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--device",
    "--dtype",
    "--max-num-seqs",
    "--max-model-len",
    "--api-key",
)
KEY = "test-key"
NO_CLASSIFIER = {"NANOCHAT_CLASSIFIER": ""}  # not under test here: spare the shared cores


def parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


# ---- the flags and their variables -------------------------------------------------------------------
def test_help_lists_every_flag_with_its_variables_and_default(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=server_env(),
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for flag in VLLM_FLAGS:
        assert f"{flag} " in text, flag
    for expected in (
        "NANOCHAT_MODEL, NANOCHAT_CHECKPOINT; default: models/demo",
        "PORT, NANOCHAT_PORT; default: 8000",
        "HOST, NANOCHAT_HOST; default: 127.0.0.1",
        "NANOCHAT_MAX_NUM_SEQS, NANOCHAT_MAX_BATCH; default: 16",
        "NANOCHAT_MAX_MODEL_LEN; default: unset",
        "NANOCHAT_MEMORY_LIMIT; default: unset",
        "NANOCHAT_SERVED_MODEL_NAME, NANOCHAT_MODEL_NAME",
        "NANOCHAT_API_KEY, NANOCHAT_API_KEYS",
        "NANOCHAT_DEVICE; default: cpu",
        "NANOCHAT_ACCEPT_ANY_MODEL; default: false",
    ):
        assert expected in text, expected


def test_the_old_variables_still_work(clean: pytest.MonkeyPatch) -> None:
    for name, value in {
        "NANOCHAT_CHECKPOINT": "old/folder",
        "NANOCHAT_MODEL_NAME": "one,two",
        "NANOCHAT_MAX_BATCH": "3",
        "NANOCHAT_API_KEYS": "k1,k2",
        "PORT": "9001",
    }.items():
        clean.setenv(name, value)
    settings = parse()
    assert settings.checkpoint == "old/folder" and settings.served_names == ["one", "two"]
    assert settings.max_batch == 3 and settings.api_keys == ["k1", "k2"] and settings.port == 9001


def test_the_new_variable_wins_over_the_old_and_the_flag_over_both(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("NANOCHAT_CHECKPOINT", "old")
    clean.setenv("NANOCHAT_MAX_BATCH", "3")
    clean.setenv("NANOCHAT_MODEL", "new")
    clean.setenv("NANOCHAT_MAX_NUM_SEQS", "5")
    clean.setenv("NANOCHAT_MAX_MODEL_LEN", "100")
    settings = parse()
    assert (settings.checkpoint, settings.max_batch, settings.max_model_len) == ("new", 5, 100)

    flags = parse(
        *("--model", "flag/folder", "--served-model-name", "a", "b", "--host", "0.0.0.0", "--port", "9002"),
        *("--device", "cpu", "--dtype", "bfloat16", "--max-num-seqs", "7", "--max-model-len", "64"),
        *("--api-key", "k", "--accept-any-model"),
    )
    assert flags.checkpoint == "flag/folder" and flags.served_names == ["a", "b"] and flags.model_name == "a"
    assert (flags.host, flags.port, flags.device, flags.dtype) == ("0.0.0.0", 9002, "cpu", "bfloat16")
    assert (flags.max_batch, flags.max_model_len, flags.api_keys) == (7, 64, ["k"])
    assert flags.accept_any_model is True
    assert parse("--no-accept-any-model").accept_any_model is False


def test_the_memory_limit_takes_units(clean: pytest.MonkeyPatch) -> None:
    assert parse().memory_limit is None
    assert parse("--memory-limit", "512MB").memory_limit == 512_000_000
    clean.setenv("NANOCHAT_MEMORY_LIMIT", "2GiB")
    assert parse().memory_limit == 2 * 1024**3
    assert parse("--memory-limit", "1000").memory_limit == 1000


def test_served_names_default_to_the_model_folders_name(clean: pytest.MonkeyPatch) -> None:
    assert parse("--model", "models/demo/").served_names == ["demo"]
    assert parse("--model", "karpathy/nanochat-d32").served_names == ["nanochat-d32"]


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--max-num-seqs", "0"], {}, "--max-num-seqs / NANOCHAT_MAX_NUM_SEQS / NANOCHAT_MAX_BATCH"),
        (["--port", "70000"], {}, "--port / PORT / NANOCHAT_PORT"),
        ([], {"NANOCHAT_MAX_BATCH": "many"}, "--max-num-seqs / NANOCHAT_MAX_NUM_SEQS / NANOCHAT_MAX_BATCH"),
        (["--max-model-len", "0"], {}, "--max-model-len / NANOCHAT_MAX_MODEL_LEN"),
        (["--memory-limit", "lots"], {}, "--memory-limit / NANOCHAT_MEMORY_LIMIT"),
        ([], {"NANOCHAT_MEMORY_LIMIT": "0MB"}, "--memory-limit / NANOCHAT_MEMORY_LIMIT"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_and_its_variables(
    tmp_path: Path, argv: list[str], env: dict[str, str], named: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=server_env(env),
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m app: error: invalid settings: ") and named in last, done.stderr
    assert "Traceback" not in done.stderr


# ---- `nanochat serve`, a real server -----------------------------------------------------------------
def checkout_metadata(folder: Path) -> Path:
    """A dist-info folder declaring this checkout's entry points, for `importlib.metadata`."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    info = folder / f"nanochat_service-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: nanochat-service\nVersion: {project['version']}\n"
    )
    groups = [
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for group, entries in project["entry-points"].items()
    ]
    (info / "entry_points.txt").write_text("\n".join(groups))
    return folder


def nanochat(folder: Path, *argv: str, **env: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `nanochat ARGV` with this checkout's entry points."""
    environment = server_env({**NO_CLASSIFIER, **env})
    environment["PYTHONPATH"] = f"{checkout_metadata(folder / 'metadata')}:{REPO_ROOT}"
    return [sys.executable, "-m", "nanochat.cli", *argv], environment


def test_nanochat_lists_serve(tmp_path: Path) -> None:
    command, env = nanochat(tmp_path, "--help")
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0 and "serve" in done.stdout, done.stderr
    command, env = nanochat(tmp_path / "again", "serve", "--help")
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(f"{flag} " in done.stdout for flag in VLLM_FLAGS), done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`nanochat serve` with flags, over variables that say otherwise (the flags win)."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    command, env = nanochat(
        folder,
        *("serve", "--model", str(DEMO), "--served-model-name", "nanochat", "tiny"),
        *("--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "2", "--max-model-len", "64"),
        *("--api-key", KEY),
        NANOCHAT_MAX_BATCH="9",
        NANOCHAT_MODEL_NAME="ignored",
        PORT=str(free_port()),
    )
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_for(server, "ready")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0) as c:
        yield c


@pytest.mark.integration
def test_the_flags_configure_the_server(served: Server, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["nanochat", "tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    stats = httpx.get(f"{served.url}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert stats["context_tokens"] == 64 and stats["scheduler"]["slots"] == 2
    assert httpx.get(f"{served.url}/v1/models", timeout=30).status_code == 401  # --api-key


@pytest.mark.integration
def test_the_start_up_line_and_stats_say_what_the_weights_and_the_cache_take(served: Server) -> None:
    """--max-num-seqs 2 --max-model-len 64: a cache of 3 rows (one for the prefill) x 64 tokens, its bytes
    those of the tensors an engine of these settings allocates."""
    demo = load_checkpoint(DEMO)
    engine = Engine(demo.model, demo.tokenizer, max_batch=2, max_seq_len=64)
    stats = httpx.get(f"{served.url}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert stats["memory"] == {
        "weights_bytes": sum(t.nbytes for t in [*demo.model.parameters(), *demo.model.buffers()]),
        "kv_cache_bytes": engine.cache.k.nbytes + engine.cache.v.nbytes,
        "kv_cache_rows": 3,
        "kv_cache_preallocated": True,
        "dtype": "float32",
        "quantization": "none",
    }
    (line,) = [json.loads(line)["message"] for line in served.log().splitlines() if '"memory: ' in line]
    weights, cache = format_bytes(stats["memory"]["weights_bytes"]), format_bytes(engine.cache.nbytes)
    total = format_bytes(stats["memory"]["weights_bytes"] + engine.cache.nbytes)
    assert (
        line == f"memory: weights {weights} (float32), KV cache {cache} (3 rows x 64 tokens), total {total}"
    )
    scrape = httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    gauge = {
        sample.labels["part"]: sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name == "nanochat_model_memory_bytes"
    }
    assert gauge == {"weights": stats["memory"]["weights_bytes"], "kv_cache": engine.cache.nbytes}


def failed_start(tmp_path: Path, *argv: str) -> tuple[int, list[str]]:
    """Run `python -m app ARGV` on the demo model, expecting it to exit by itself: its status and its log
    lines (JSON: not a terminal)."""
    command = [sys.executable, "-m", "app", "--port", str(free_port()), *argv]
    env = server_env(NO_CLASSIFIER)
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    return done.returncode, (done.stdout + done.stderr).splitlines()


@pytest.mark.integration
def test_max_model_len_above_the_models_context_is_refused(tmp_path: Path) -> None:
    status, lines = failed_start(tmp_path, "--max-model-len", "300")
    assert status == EXIT_LOAD_FAILED, lines
    (error,) = [json.loads(line) for line in lines if "failed to load" in line]
    assert error["severity"] == "ERROR" and "stack_trace" not in error
    assert "--max-model-len 300 is above the model's context of 256 tokens" in error["message"]
    assert not any("Traceback" in line for line in lines)


@pytest.mark.integration
def test_a_model_over_the_memory_limit_is_one_line_before_its_weights_load(tmp_path: Path) -> None:
    status, lines = failed_start(tmp_path, "--memory-limit", "1MB", "--max-num-seqs", "4")
    assert status == EXIT_LOAD_FAILED, lines
    (error,) = [json.loads(line) for line in lines if "failed to load" in line]
    assert error["severity"] == "ERROR" and "stack_trace" not in error
    message = error["message"]
    assert "does not fit" in message and "the memory limit is 1.0 MB (--memory-limit)" in message, message
    assert "KV cache" in message and "5 rows x 256 tokens" in message and "weights" in message
    assert all(flag in message for flag in ("--max-model-len", "--max-num-seqs", "--dtype")), message
    assert not any("Traceback" in line for line in lines)
    assert not any(line.startswith('{"severity": "INFO", "message": "model ') for line in lines)  # not ready


@pytest.mark.integration
def test_any_served_name_is_answered_under_the_first(client: openai.OpenAI) -> None:
    hello = [{"role": "user", "content": "Hello!"}]
    done = client.chat.completions.create(model="tiny", messages=hello, max_tokens=4, temperature=0)
    assert done.model == "nanochat" and done.choices[0].message.content
    done = client.completions.create(model="nanochat", prompt="Once", max_tokens=2, temperature=0)
    assert done.model == "nanochat"


@pytest.mark.integration
def test_an_unknown_model_is_a_404_in_openais_shape(served: Server, client: openai.OpenAI) -> None:
    hello = [{"role": "user", "content": "Hello!"}]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=hello, max_tokens=4)
    assert caught.value.code == "model_not_found"
    headers = {"Authorization": f"Bearer {KEY}"}
    for path, body in [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": hello}),
        ("/v1/completions", {"model": "gpt-4o", "prompt": "Once"}),
    ]:
        response = httpx.post(f"{served.url}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 404
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "model_not_found",
            "model",
        )
        assert "'gpt-4o'" in error["message"] and "'nanochat', 'tiny'" in error["message"]
    response = httpx.get(f"{served.url}/v1/models/gpt-4o", headers=headers, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    # no `model` at all: the served one
    body = {"messages": hello, "max_tokens": 2}
    response = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == "nanochat"


@pytest.mark.integration
def test_max_model_len_caps_the_context(client: openai.OpenAI) -> None:
    """The demo model's own context is 256 tokens: 100 words fit it, not the 64 asked for."""
    words = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="nanochat", messages=words, max_tokens=1)
    assert caught.value.code == "context_length_exceeded" and "64" in caught.value.body["message"]


@pytest.mark.integration
def test_any_model_name_when_configured(start_server) -> None:
    """NANOCHAT_ACCEPT_ANY_MODEL, for clients that send a fixed name; here with the older variables."""
    server = start_server(
        {"NANOCHAT_MODEL_NAME": "old-name", "NANOCHAT_ACCEPT_ANY_MODEL": "true", **NO_CLASSIFIER}
    )
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["old-name"]
        hello = [{"role": "user", "content": "Hello!"}]
        done = client.chat.completions.create(model="gpt-4o", messages=hello, max_tokens=2, temperature=0)
        assert done.model == "old-name"


# ---- one port ----------------------------------------------------------------------------------------
def test_the_documented_container_run_publishes_the_one_app_port() -> None:
    """`podman run -p 8000:8000` (or docker's) as documented reaches the image's port, app/contract.py's."""
    from app.contract import APP_PORT

    documents = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    published = [
        (path.name, int(container))
        for path in documents
        for container in re.findall(
            r"(?:podman|docker) run [^\n`]*?-p (?:[\d.]+:)?\d+:(\d+)", path.read_text()
        )
    ]
    assert published, "no document shows how to run the image"
    assert all(port == APP_PORT for _, port in published), published
