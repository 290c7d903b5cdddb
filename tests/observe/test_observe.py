"""The local observability stack: scripts/observe.sh (`make observe`) runs for real; docker-compose.yml, which
cannot run here (no Docker daemon), is checked as data: the Compose schema, the files it mounts, and its
Prometheus config through promtool in a copy of the container's file layout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pytest
import yaml

from app.contract import METRICS_JOB as JOB
from app.contract import METRICS_PORT
from tests.promql_support import GRAFANA_ALERTING, ROOT, alert_rules, grafana_rule_queries

COMPOSE = ROOT / "docker-compose.yml"
OBSERVE = ROOT / "scripts" / "observe.sh"
SERVICES = {"app", "prometheus", "grafana", "otel-collector", "jaeger"}


def default_sigint() -> None:
    """In the script's process: SIGINT back to its default. A shell cannot trap a signal it was started
    with ignored, and a suite launched in the background (`make test &`) ignores SIGINT in every process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


STARTUP_BOUND_S = 600  # only bounds a hang: the app loads slowly on two busy cores


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def tool(name: str, install: str) -> str:
    """The executable `name` (the virtual environment's first), or skip saying how to install it."""
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} not found: {install}")
    return path


def bind_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path of a service's `./host:/container[:ro]` volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = ROOT / source
    return mounts


def host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "//" in url else f"//{url}")
    return parsed.hostname, parsed.port


def test_observe_script_is_shellcheck_clean():
    result = subprocess.run(
        [tool("shellcheck", "apt-get install -y shellcheck"), str(OBSERVE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_observe_script_says_what_to_install(tmp_path):
    tool("curl", "apt-get install -y curl")  # checked first
    env = {**os.environ, "PROMETHEUS": str(tmp_path / "no-prometheus"), "OBSERVE_DIR": str(tmp_path)}
    result = subprocess.run(["bash", str(OBSERVE)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "not found (apt-get install -y prometheus)" in result.stderr


def test_makefile_observe_target_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert "\nobserve: setup\n\tscripts/observe.sh\n" in makefile
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:"))
    assert "observe" in phony.split()


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run(
        [
            tool("check-jsonschema", "a dev dependency: pip install -e '.[dev]'"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_stack_with_pinned_images(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["app"]["build"] == "."
    for name, service in services.items():
        if "image" in service:
            image, _, tag = service["image"].rpartition(":")
            assert image and tag and tag != "latest", f"{name}: pin an image tag"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_mounts_exist(compose):
    for name, service in compose["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name} mounts {source} at {target}, which does not exist"


def test_compose_prometheus_config_passes_promtool(compose, tmp_path):
    """Lay the mounted files out as the container sees them, then let promtool check the config."""
    promtool = tool("promtool", "apt-get install -y prometheus")
    prometheus = compose["services"]["prometheus"]
    for target, source in bind_mounts(prometheus).items():
        copy = tmp_path / target.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
    config_arg = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = tmp_path / config_arg.split("=", 1)[1].lstrip("/")
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = len(list((ROOT / "alerts").glob("*.rules.yaml")))
    assert f"SUCCESS: {rule_files} rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout

    [scrape] = yaml.safe_load(config.read_text())["scrape_configs"]
    assert scrape["job_name"] == JOB
    # /metrics is served on the app's metrics port, which compose does not publish
    metrics_port = int(compose["services"]["app"]["environment"]["NANOCHAT_METRICS_PORT"])
    assert metrics_port == METRICS_PORT
    assert [host_port(t) for t in scrape["static_configs"][0]["targets"]] == [("app", metrics_port)]


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]

    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    assert host_port(datasource["url"]) == ("prometheus", 9090)
    assert "127.0.0.1:9090:9090" in compose["services"]["prometheus"]["ports"]

    [provider] = yaml.safe_load((provisioning / "dashboards" / "nanochat.yaml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "nanochat.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/nanochat.json"
    variables = json.loads((dashboards / "nanochat.json").read_text())["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == datasource["type"] for v in variables)

    # the Grafana-managed alert rules (alerts/build.py) are in the mounted folder and query this datasource
    assert GRAFANA_ALERTING.parent == provisioning / "alerting"
    alerting = yaml.safe_load(GRAFANA_ALERTING.read_text())
    uids = {q["datasourceUid"] for g in alerting["groups"] for r in g["rules"] for q in r["data"]}
    assert datasource["uid"] in uids and uids <= {datasource["uid"], "__expr__"}


def test_compose_traces_flow_from_app_through_the_collector_to_jaeger(compose):
    services = compose["services"]
    collector = yaml.safe_load(
        bind_mounts(services["otel-collector"])["/etc/otelcol/config.yaml"].read_text()
    )
    app_endpoint = services["app"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    http_receiver = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert host_port(app_endpoint) == ("otel-collector", host_port(http_receiver)[1])

    [pipeline] = collector["service"]["pipelines"].values()
    for kind in ("receivers", "processors", "exporters"):
        for name in pipeline[kind]:
            assert name in collector[kind], f"pipeline uses undefined {kind[:-1]} {name}"
    [exporter] = (collector["exporters"][name] for name in pipeline["exporters"])
    host, port = host_port(exporter["endpoint"])
    assert host == "jaeger" and port == 4317  # Jaeger's OTLP gRPC port
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.integration
def test_observe_runs_the_app_and_prometheus_with_the_rules_then_stops_both(tmp_path):
    tool("prometheus", "apt-get install -y prometheus")
    tool("curl", "apt-get install -y curl")
    app_port, prometheus_port = free_port(), free_port()
    env = {
        **os.environ,
        "OBSERVE_APP_PORT": str(app_port),
        "OBSERVE_PROMETHEUS_PORT": str(prometheus_port),
        "OBSERVE_DIR": str(tmp_path),
        "OBSERVE_STARTUP_TIMEOUT_S": str(STARTUP_BOUND_S),
        "PYTHON": sys.executable,
    }
    script = subprocess.Popen(
        ["bash", str(OBSERVE)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # a group of its own, killed whole if it hangs
        preexec_fn=default_sigint,
    )  # fmt: skip
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    try:
        deadline = time.monotonic() + STARTUP_BOUND_S
        targets = []
        while time.monotonic() < deadline and script.poll() is None:
            try:
                targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
            except OSError:
                targets = []
            if targets and targets[0]["health"] == "up":
                break
            time.sleep(1)
        assert script.poll() is None, script.stdout.read()
        assert [(t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets] == [
            (JOB, f"127.0.0.1:{app_port}", "up")
        ]
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"]}
        assert loaded == {rule["alert"] for rule in alert_rules()}
        ready = get_json(f"{prometheus}/api/v1/query?query=nanochat_ready")["data"]["result"]
        assert [sample["metric"]["job"] for sample in ready] == [JOB]
        # the Grafana-managed rules' queries, as Grafana's Prometheus datasource sends them (instant queries)
        grafana_queries = grafana_rule_queries()
        assert grafana_queries
        for title, query in grafana_queries:
            answer = get_json(f"{prometheus}/api/v1/query?{urlencode({'query': query})}")
            assert answer["status"] == "success" and answer["data"]["resultType"] == "vector", title
    finally:
        script.send_signal(signal.SIGINT)
        try:
            output, _ = script.communicate(timeout=STARTUP_BOUND_S)
        except subprocess.TimeoutExpired:  # a hang: nothing it started may outlive the test
            os.killpg(script.pid, signal.SIGKILL)
            raise
    assert script.returncode == 130, output
    assert f"prometheus   http://127.0.0.1:{prometheus_port}" in output
    assert "stopping" in output
    assert not port_open(app_port) and not port_open(prometheus_port), output
