"""Metrics under gunicorn: processes that write to one PROMETHEUS_MULTIPROC_DIR (real prometheus-client
multiprocess mode, one subprocess per "worker") are merged by `render` with each gauge's mode, and the hooks
of app/gunicorn.conf.py empty the folder at start and take a dead worker's live gauges out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[3]
GUNICORN_CONF = REPO_ROOT / "app" / "gunicorn.conf.py"

WORKER = """
import os, sys
from app.observability import metrics
metrics.set_ready(sys.argv[1] == "ready")
metrics.set_capacity(64, 16)
metrics.observe_request("/v1/chat/completions", "POST", 200, 0.1)
metrics.describe_service("demo", 0.16)
print(os.getpid())
"""
RENDER = """
import os
from prometheus_client import multiprocess
from app.observability import metrics
multiprocess.mark_process_dead(os.getpid())  # importing made this process's gauges; it is no worker
print(metrics.render()[0].decode())
"""
HOOK = """
import runpy, sys, types
hooks = runpy.run_path(sys.argv[1])
if sys.argv[2] == "on_starting":
    hooks["on_starting"](None)
else:
    hooks["child_exit"](None, types.SimpleNamespace(pid=int(sys.argv[3])))
"""


@pytest.fixture
def run(tmp_path: Path):
    """run(script, *args) -> stdout, in a subprocess whose metrics go to one multiprocess folder."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}

    def run_script(script: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run_script.folder = folder  # type: ignore[attr-defined]
    return run_script


def merged(run) -> dict[str, float]:
    """Series (name with labels) -> value, as /metrics of any worker would show them."""
    values = {}
    for family in text_string_to_metric_families(run(RENDER)):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@pytest.mark.slow
@pytest.mark.integration
def test_workers_are_merged_and_dead_ones_leave_the_live_gauges(run) -> None:
    run(WORKER, "ready")  # a previous run's files
    assert list(run.folder.glob("*.db"))
    run(HOOK, str(GUNICORN_CONF), "on_starting")
    assert not list(run.folder.glob("*.db")), "gunicorn's start must empty the metrics folder"

    run(WORKER, "ready")
    run(WORKER, "ready")
    loading = run(WORKER, "loading").strip()
    values = merged(run)
    requests = "nanochat_requests_total{method=POST,route=/v1/chat/completions,status_class=2xx}"
    assert values[requests] == 3  # counters: summed
    assert values["nanochat_batch_slots"] == 48  # livesum
    assert values["nanochat_ready"] == 0  # livemin: one worker is still loading
    assert values["nanochat_instance_price_dollars_per_hour"] == pytest.approx(0.16)  # livemax, not 3 x
    build = [name for name in values if name.startswith("nanochat_build_info")]
    assert len(build) == 1 and values[build[0]] == 1

    run(HOOK, str(GUNICORN_CONF), "child_exit", loading)
    values = merged(run)
    assert values["nanochat_ready"] == 1  # the loading worker died: the live ones are ready
    assert values["nanochat_batch_slots"] == 32
    assert values[requests] == 3  # what the dead worker counted still counts


# a scrape by the master's metrics server (app/metrics_server.py), as Prometheus makes it
SCRAPE = """
import urllib.request
from app import metrics_server
server = metrics_server.start("127.0.0.1", 0)
with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=60) as response:
    print(response.status)
    print(response.read().decode())
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_still_creating_its_file_does_not_fail_the_scrape(run) -> None:
    """A worker creates its file empty and then sizes it: a scrape in between read an empty file, and
    prometheus_client's merge raised (the master's metrics port answered 500, the app port's /metrics
    too). The file is left out of that scrape; the other workers' values are all there."""
    run(WORKER, "ready")
    run(WORKER, "ready")
    (run.folder / "gauge_livemin_999999.db").write_bytes(b"")  # created, not yet sized
    (run.folder / "counter_999998.db").write_bytes(b"\x00\x01")  # its first bytes only

    values = merged(run)  # what `render` gives (the app port's /metrics under gunicorn)
    assert values["nanochat_batch_slots"] == 32 and values["nanochat_ready"] == 1

    status, _, text = run(SCRAPE).partition("\n")
    assert status == "200", text
    scraped = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    assert scraped["nanochat_batch_slots"] == 32 and scraped["nanochat_ready"] == 1
