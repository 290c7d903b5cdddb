"""The whole observability path with real processes: the app under gunicorn (2 workers, the demo model), a
second instance that turns every generation into a 504, a real Prometheus (Debian's) scraping both every
second with the repository's alert rules, locust traffic with errors (400, 504), and a burst the service
must partly turn away (429). Then:

- every metric of the catalog (app/observability/catalog.py) has series in Prometheus (GPU and memory-limit
  ones only where the machine has them), so a metric renamed in code fails here;
- a counter of the gunicorn instance is the sum over its workers, whichever worker answers the scrape;
- every dashboard panel query and every alert expression is valid PromQL for Prometheus' HTTP API, panels
  return data, and the series each alert reads exist;
- the error-rate alert (its threshold: loadtest/slo.yaml) goes pending or firing;
- every line gunicorn and its workers print is JSON.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from app.contract import METRICS_JOB
from app.observability import catalog as metric_catalog

REPO_ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
RULE_FILES = sorted((REPO_ROOT / "alerts").glob("*.rules.yaml"))
DASHBOARDS = sorted((REPO_ROOT / "dashboards").glob("*.json"))
TRAFFIC_S = 15
USERS = 8
MODELS_REQUESTS = 30
BURST = 12
START_TIMEOUT_S = 180  # only bounds a hang: two shared cores
ALERT_TIMEOUT_S = 20
JOB = METRICS_JOB

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(PROMETHEUS).is_file(), reason="no prometheus (apt-get install prometheus)"),
    pytest.mark.skipif(not (BIN / "gunicorn").is_file(), reason="no gunicorn in this environment"),
    pytest.mark.skipif(not (BIN / "locust").is_file(), reason="no locust in this environment"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A started process whose output goes to a file, stopped (TERM, then KILL) at the end."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_until(check: Callable[[], bool], what: str, timeout: float, processes: list[Process]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if not process.alive():
                pytest.fail(
                    f"{process.log_path.name} exited while waiting for {what}:\n{process.log()[-3000:]}"
                )
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-1500:]}" for p in processes)
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.2)


class PrometheusAPI:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def query(self, promql: str) -> list[dict]:
        """The result of an instant query; a query Prometheus refuses fails the test with its error."""
        response = self.http.get("/api/v1/query", params={"query": promql})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{promql}\n-> {body}"
        return body["data"]["result"]

    def value(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def alerts(self) -> list[dict]:
        return self.http.get("/api/v1/alerts").json()["data"]["alerts"]


@pytest.fixture
def stack(tmp_path: Path, clean_env: Callable[..., dict[str, str]]) -> Iterator[dict]:
    processes: list[Process] = []
    try:
        # the service: gunicorn, 2 workers, a small batch and queue so that bursts get 429s
        service_port, deadline_port, prometheus_port = free_port(), free_port(), free_port()
        service_env = {"PORT": str(service_port), "NANOCHAT_WORKERS": "2", "NANOCHAT_MAX_BATCH": "2",
                       "NANOCHAT_MAX_QUEUE": "1"}  # fmt: skip
        gunicorn = Process(
            [str(BIN / "gunicorn"), "-c", str(REPO_ROOT / "app" / "gunicorn.conf.py")],
            tmp_path / "gunicorn.log",
            clean_env(service_env),
            tmp_path,
        )
        processes.append(gunicorn)
        # the failing instance: no generation fits in its request timeout, each one is a 504
        deadline_env = {"NANOCHAT_REQUEST_TIMEOUT_S": "0.001", "NANOCHAT_MAX_TOKENS_LIMIT": "64"}
        deadline = Process(
            [sys.executable, "-m", "app", "--port", str(deadline_port)],
            tmp_path / "deadline.log",
            clean_env(deadline_env),
            tmp_path,
        )
        processes.append(deadline)
        # Prometheus scraping both every second, evaluating the rules every second
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{service_port}", f"127.0.0.1:{deadline_port}"]}
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = Process(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            tmp_path / "prometheus.log",
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            tmp_path,
        )
        processes.append(prometheus)
        service_url = f"http://127.0.0.1:{service_port}"
        deadline_url = f"http://127.0.0.1:{deadline_port}"
        api = PrometheusAPI(f"http://127.0.0.1:{prometheus_port}")

        def both_workers_ready() -> bool:  # nanochat_ready is the minimum over the live workers
            return "\nnanochat_ready 1.0" in httpx.get(f"{service_url}/metrics", timeout=2).text

        wait_until(both_workers_ready, "the gunicorn workers", START_TIMEOUT_S, processes)
        ready = lambda: httpx.get(f"{deadline_url}/ready", timeout=2).status_code == 200  # noqa: E731
        wait_until(ready, "the deadline instance", START_TIMEOUT_S, processes)
        up = lambda: api.value(f'sum(up{{job="{JOB}"}})') == 2  # noqa: E731
        wait_until(up, "Prometheus to scrape both instances", START_TIMEOUT_S, processes)
        yield {
            "service_url": service_url,
            "service_instance": f"127.0.0.1:{service_port}",
            "deadline_url": deadline_url,
            "api": api,
            "gunicorn": gunicorn,
            "processes": processes,
            "tmp": tmp_path,
        }
    finally:
        for process in reversed(processes):
            process.stop()


def run_locust(stack: dict, clean_env: Callable[..., dict[str, str]]) -> dict[str, int]:
    """Locust for TRAFFIC_S seconds; requests by name. Any unexpected status fails the test."""
    prefix = stack["tmp"] / "locust"
    done = subprocess.run(
        [
            str(BIN / "locust"),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "--users",
            str(USERS),
            "--spawn-rate",
            str(USERS),
            "--run-time",
            f"{TRAFFIC_S}s",
            "--csv",
            str(prefix),
            "--loglevel",
            "WARNING",
        ],
        env=clean_env(
            {"NANOCHAT_SERVICE_URL": stack["service_url"], "NANOCHAT_DEADLINE_URL": stack["deadline_url"]}
        ),
        cwd=stack["tmp"],
        capture_output=True,
        text=True,
        timeout=TRAFFIC_S + 60,
    )
    assert done.returncode == 0, (
        f"locust saw unexpected answers:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    with open(f"{prefix}_stats.csv") as stats:
        return {
            row["Name"]: int(row["Request Count"]) for row in csv.DictReader(stats) if row["Type"] == "POST"
        }


def burst(url: str) -> list[int]:
    """BURST long requests at once: more than the service can hold, so some are turned away (429)."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "ignore_eos": True}

    def post(_: int) -> int:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(post, range(BURST)))


def series_names(promql: str) -> set[str]:
    return set(re.findall(r"\b(nanochat_\w+|up)\b(?=\s*[{\[)\s]|$)", promql))


def test_dashboards_and_alerts_against_a_real_prometheus(stack: dict, clean_env) -> None:
    api: PrometheusAPI = stack["api"]
    sent = run_locust(stack, clean_env)
    assert sent.get("deadline", 0) > 0 and sent.get("chat stream", 0) > 0, sent
    statuses = burst(stack["service_url"])
    assert statuses.count(429) >= BURST - 2 * (2 + 1), statuses  # 2 workers, each: batch 2 + queue 1

    # Both workers' counts, merged: a known number of requests, each on a new connection (the kernel hands
    # them to either worker), and every scrape (which reaches either worker) sees them all.
    counter = (
        f'sum(nanochat_requests_total{{job="{JOB}",instance="{stack["service_instance"]}",'
        'route="/v1/models",method="GET"})'
    )
    for _ in range(MODELS_REQUESTS):
        assert httpx.get(f"{stack['service_url']}/v1/models").status_code == 200
    counted = lambda: api.value(counter) == MODELS_REQUESTS  # noqa: E731
    wait_until(counted, f"{counter} == {MODELS_REQUESTS}", START_TIMEOUT_S, stack["processes"])
    time.sleep(3)  # three more scrapes, whichever worker answers them
    assert api.value(f"changes(({counter})[3s:500ms])") == 0  # the same in every scrape
    assert api.value(counter) == MODELS_REQUESTS

    catalog = metric_catalog.by_name()
    optional = {series for metric in catalog.values() if metric.optional for series in metric.series}
    for metric in catalog.values():
        if metric.optional:
            continue
        for series in metric.series:
            assert api.query(f'count({series}{{job="{JOB}"}})'), f"{series} has no series in Prometheus"
    assert api.value(f'sum(nanochat_rejected_requests_total{{job="{JOB}",reason="deadline"}})') > 0
    assert api.value(f'sum(nanochat_finished_requests_total{{job="{JOB}",finish_reason="deadline"}})') > 0
    assert api.value(f'sum(nanochat_rejected_requests_total{{job="{JOB}",reason="validation"}})') > 0
    assert api.value(f'sum(nanochat_rejected_requests_total{{job="{JOB}",reason="queue_full"}})') > 0

    from tests.promql_support import alert_rules, dashboard_queries

    queries = [
        (f"{path.name}: {title}", query)
        for path in DASHBOARDS
        for title, query in dashboard_queries(path, job=JOB, rate_interval="20s", interval="5s", range_="1m")
    ]
    assert queries or not DASHBOARDS, "the dashboards hold no Prometheus queries"
    empty = []
    for title, query in queries:
        if not api.query(query) and not series_names(query) & optional:
            empty.append(f"{title}: {query}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    rules = alert_rules() if RULE_FILES else []
    for rule in rules:
        api.query(rule["expr"])  # valid PromQL
        for series in series_names(rule["expr"]) - optional:
            assert api.query(f"count({series})"), f"alert {rule['alert']} reads {series}, which has no series"

    if rules:
        (error_rule,) = [rule for rule in rules if 'status_class="5xx"' in rule["expr"]]
        threshold = yaml.safe_load((REPO_ROOT / "loadtest" / "slo.yaml").read_text())["error_rate_max"]
        assert re.search(rf">\s*{re.escape(str(threshold))}\b", error_rule["expr"]), error_rule["expr"]

        def error_alert_active() -> bool:
            states = {a["state"] for a in api.alerts() if a["labels"]["alertname"] == error_rule["alert"]}
            return bool(states & {"pending", "firing"})

        wait_until(error_alert_active, f"{error_rule['alert']} pending", ALERT_TIMEOUT_S, stack["processes"])

    for line in stack["gunicorn"].log().splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
