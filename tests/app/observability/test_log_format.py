"""Which log format a real `python -m app` writes: text on a terminal (a real pseudo-terminal from `pty`),
JSON into a pipe (a container, CI), and NANOCHAT_LOG_FORMAT forcing either way. The server is given a
checkpoint that does not exist, so it logs its start and its load failure, then exits 3."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.observability.logging import logging_config, resolve_format

pytestmark = pytest.mark.integration

EXIT_LOAD_FAILED = 3
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) [\w.]+: .+")
TIMEOUT_S = 120  # only bounds a hang: imports are slow on two shared cores


def run_app(tmp_path: Path, env: dict[str, str], terminal: bool) -> list[str]:
    """The lines `python -m app` writes (stdout and stderr) when its output is a terminal or a pipe."""
    command = [sys.executable, "-m", "app", "--port", "1"]  # never listens: the load fails first
    if not terminal:
        pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        done = subprocess.run(command, cwd=tmp_path, env=env, timeout=TIMEOUT_S, **pipe)
        assert done.returncode == EXIT_LOAD_FAILED, done.stdout.decode(errors="replace")
        return done.stdout.decode().splitlines()
    controller, terminal_end = pty.openpty()
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=terminal_end, stderr=terminal_end)
    os.close(terminal_end)  # the child holds it: reading ends (EIO) once the child has exited
    output = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
    assert process.wait(timeout=TIMEOUT_S) == EXIT_LOAD_FAILED, output.decode(errors="replace")
    return output.decode().replace("\r\n", "\n").splitlines()


@pytest.fixture
def failing_app(tmp_path: Path, clean_env: Callable[..., dict[str, str]]) -> Callable[..., list[str]]:
    def run(terminal: bool, log_format: str | None = None) -> list[str]:
        env = clean_env({"NANOCHAT_CHECKPOINT": str(tmp_path / "missing"), "NANOCHAT_CLASSIFIER": ""})
        if log_format is not None:
            env["NANOCHAT_LOG_FORMAT"] = log_format
        lines = [line for line in run_app(tmp_path, env, terminal) if line.strip()]
        assert any("failed to load" in line for line in lines), lines
        return lines

    return run


def assert_text(lines: list[str]) -> None:
    for line in lines:
        assert TEXT_LINE.fullmatch(line), f"not a text log line: {line!r}"
    assert any(" ERROR app.main: the model failed to load from " in line for line in lines), lines


def assert_json(lines: list[str]) -> None:
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    failed = [r for r in records if "failed to load" in r["message"]]
    assert failed and failed[0]["severity"] == "ERROR" and failed[0]["logger"] == "app.main", records


def test_a_terminal_gets_text(failing_app) -> None:
    assert_text(failing_app(terminal=True))


def test_a_pipe_gets_json(failing_app) -> None:
    assert_json(failing_app(terminal=False))


def test_the_setting_forces_json_on_a_terminal(failing_app) -> None:
    assert_json(failing_app(terminal=True, log_format="json"))


def test_the_setting_forces_text_into_a_pipe(failing_app) -> None:
    assert_text(failing_app(terminal=False, log_format="text"))


def test_auto_follows_this_process_stdout(capsys) -> None:
    """Under pytest's capture stdout is not a terminal: `auto` is JSON, the forced ones stay."""
    assert not sys.stdout.isatty()
    assert resolve_format("auto") == "json"
    assert [resolve_format(f) for f in ("json", "text")] == ["json", "text"]
    assert logging_config("info", "auto")["formatters"]["service"]["()"].endswith("JsonFormatter")
    with pytest.raises(ValueError, match="'auto', 'json' or 'text'"):
        resolve_format("xml")
