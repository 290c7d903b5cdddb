"""The budget kill switch: its function run for real, and its construct synthesized.

The function (infra/kill_switch/main.py) runs under `functions-framework`, the server Cloud Run functions
runs it in, and receives CloudEvents over HTTP exactly as Eventarc delivers a Pub/Sub message (binary
mode). Its Compute and Cloud Run API calls go to a stand-in on 127.0.0.1 that keeps the GPU group, its
autoscaler and the service as state, answers with the APIs' resource and long-running operation shapes,
and records every request. The stand-in is as strict as the real APIs where it matters: a group whose
autoscaler is on cannot be resized, and a Cloud Run PATCH without an update mask replaces the service.

The construct (modules/kill_switch.py) is synthesized once into a small stack of its own. Its "kill switch
acted" alert policy's log filter is checked against the lines the function really prints, read as Cloud
Logging stores them (the JSON line's fields in `jsonPayload`, on a `cloud_run_revision` resource).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from infra.config import ROOT
from infra.kill_switch import main as kill_switch

PROJECT, REGION, GROUP, SERVICE = "nanochat-test", "europe-west4", "nanochat-gpu-dev", "nanochat"
AUTOSCALER = f"{GROUP}-autoscaler"
TOKEN = "test-token"
FUNCTION = "nanochat-kill-switch-dev"
CHANNELS = [f"projects/{PROJECT}/notificationChannels/1", f"projects/{PROJECT}/notificationChannels/2"]
FUNCTION_DIR = ROOT / "infra" / "kill_switch"


def google_error(code: int, message: str, reason: str = "") -> dict:
    return {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}


class FakeGoogleApis:
    """State and request log of the stand-in Compute (v1) and Cloud Run (v2) APIs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self, *, autoscaler: bool = True, deny_compute: bool = False) -> None:
        self.requests: list[dict] = []
        self.deny_compute = deny_compute
        self.operations: dict[str, dict] = {}
        link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/regions/{REGION}/autoscalers/"
        self.group = {
            "kind": "compute#instanceGroupManager",
            "name": GROUP,
            "targetSize": 1,
            "status": {"isStable": True, **({"autoscaler": link + AUTOSCALER} if autoscaler else {})},
        }
        self.autoscalers = {}
        if autoscaler:
            self.autoscalers[AUTOSCALER] = {
                "kind": "compute#autoscaler",
                "name": AUTOSCALER,
                "target": GROUP,
                "autoscalingPolicy": {
                    "mode": "ON",
                    "minNumReplicas": 0,
                    "maxNumReplicas": 2,
                    "scalingSchedules": {"work-hours": {"schedule": "0 8 * * 1-5", "minRequiredReplicas": 1}},
                },
            }
        self.service = {
            "name": f"projects/{PROJECT}/locations/{REGION}/services/{SERVICE}",
            "scaling": {"minInstanceCount": 0},
            "template": {"scaling": {"maxInstanceCount": 3}, "containers": [{"image": "app@sha256:1"}]},
            "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "nanochat-1"}],
        }

    def writes(self) -> list[dict]:
        return [r for r in self.requests if r["method"] in ("POST", "PATCH", "PUT", "DELETE")]

    def run_operation(self) -> dict:
        """A google.longrunning.Operation: not done when returned, done on the next GET."""
        op_id = uuid.uuid4().hex[:12]
        name = f"projects/{PROJECT}/locations/{REGION}/operations/{op_id}"
        metadata = {"@type": "type.googleapis.com/google.cloud.run.v2.Service"}
        self.operations[op_id] = {"name": name, "done": True, "response": copy.deepcopy(self.service)}
        return {"name": name, "metadata": metadata, "done": False}

    def compute_operation(self, target: str) -> dict:
        """A compute#operation: RUNNING when returned, DONE when waited on."""
        name = f"operation-{uuid.uuid4().hex[:12]}"
        self.operations[name] = {
            "kind": "compute#operation",
            "name": name,
            "status": "DONE",
            "targetLink": target,
        }
        return {**self.operations[name], "status": "RUNNING"}

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        region = f"/compute/v1/projects/{PROJECT}/regions/{REGION}"
        service_path = f"/run/v2/projects/{PROJECT}/locations/{REGION}/services/{SERVICE}"
        if path.startswith("/compute/") and self.deny_compute:
            return 403, google_error(
                403, "Required 'compute.instanceGroupManagers.get' permission", "forbidden"
            )
        if method == "GET" and path == f"{region}/instanceGroupManagers/{GROUP}":
            return 200, self.group
        if method == "GET" and path.startswith(f"{region}/autoscalers/"):
            found = self.autoscalers.get(path.rsplit("/", 1)[-1])
            return (200, found) if found else (404, google_error(404, "autoscaler not found", "notFound"))
        if method == "PATCH" and path == f"{region}/autoscalers":
            autoscaler = self.autoscalers.get(query.get("autoscaler", ""))
            if autoscaler is None:
                return 404, google_error(404, "autoscaler not found", "notFound")
            # JSON merge patch, as Compute's PATCH methods do
            autoscaler["autoscalingPolicy"].update((body or {}).get("autoscalingPolicy", {}))
            return 200, self.compute_operation(autoscaler["name"])
        if method == "POST" and path == f"{region}/instanceGroupManagers/{GROUP}/resize":
            on = [a for a in self.autoscalers.values() if a["autoscalingPolicy"]["mode"] != "OFF"]
            if on:
                message = (
                    f"The instance group manager is autoscaled by '{on[0]['name']}'; resize is not allowed"
                )
                return 400, google_error(400, message, "resourceInUseByAnotherResource")
            self.group["targetSize"] = int(query["size"])
            return 200, self.compute_operation(GROUP)
        if method == "POST" and path.startswith(f"{region}/operations/") and path.endswith("/wait"):
            return 200, self.operations[path.split("/")[-2]]
        if method == "GET" and path == service_path:
            return 200, self.service
        if method == "PATCH" and path == service_path:
            mask = query.get("updateMask")
            if mask is None:  # without a mask the body replaces the service
                self.service = {"name": self.service["name"], **(body or {})}
            else:
                for field in mask.split(","):
                    top, _, leaf = field.partition(".")
                    self.service.setdefault(top, {})[leaf] = body[top][leaf]
            return 200, self.run_operation()
        if method == "GET" and path.startswith(f"/run/v2/projects/{PROJECT}/locations/{REGION}/operations/"):
            return 200, self.operations[path.rsplit("/", 1)[-1]]
        return 404, google_error(404, f"no such resource: {method} {path}", "notFound")


def serve(apis: FakeGoogleApis) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with apis.lock:
                apis.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": query,
                        "body": body,
                        "authorization": self.headers.get("Authorization"),
                    }
                )
                status, answer = apis.handle(self.command, url.path, query, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def apis():
    fake = FakeGoogleApis()
    server = serve(fake)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def function_env(apis) -> dict[str, str]:
    """The function's settings, pointed at the local stand-in APIs."""
    return {
        "KILL_SWITCH_PROJECT": PROJECT,
        "KILL_SWITCH_REGION": REGION,
        "KILL_SWITCH_GPU_GROUP": GROUP,
        "KILL_SWITCH_SERVICE": SERVICE,
        "KILL_SWITCH_COMPUTE_API": f"{apis.url}/compute/v1",
        "KILL_SWITCH_RUN_API": f"{apis.url}/run/v2",
        "KILL_SWITCH_ACCESS_TOKEN": TOKEN,
    }


@pytest.fixture(scope="module")
def function(apis, tmp_path_factory):
    """The kill switch under functions-framework; yields (url, log file)."""
    port = free_port()
    log = tmp_path_factory.mktemp("kill-switch") / "stdout.log"
    env = {**os.environ, **function_env(apis), "KILL_SWITCH_MAX_INSTANCES": "1"}
    cli = Path(sys.executable).with_name("functions-framework")
    command = [str(cli), "--target", "kill_switch", "--source", str(FUNCTION_DIR / "main.py")]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"functions-framework did not start:\n{log.read_text()}")
            time.sleep(0.2)
    yield url, log
    process.terminate()
    process.wait(timeout=10)


def budget_message(cost: float, budget: float = 100.0, **extra) -> dict:
    """The data of an Eventarc Pub/Sub CloudEvent carrying a budget notification (schema 1.0)."""
    payload = {
        "budgetDisplayName": "nanochat dev",
        "costAmount": cost,
        "costIntervalStart": "2026-06-01T07:00:00Z",
        "budgetAmount": budget,
        "budgetAmountType": "SPECIFIED_AMOUNT",
        "currencyCode": "EUR",
        **extra,
    }
    return encoded_message(json.dumps(payload).encode())


def encoded_message(data: bytes) -> dict:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {
                "billingAccountId": "01A2B3-C4D5E6-F7A8B9",
                "budgetId": "b-1",
                "schemaVersion": "1.0",
            },
            "messageId": uuid.uuid4().hex,
            "publishTime": "2026-06-20T10:00:00.000Z",
        },
        "subscription": f"projects/{PROJECT}/subscriptions/eventarc-{REGION}-kill-switch",
    }


def post_event(function, data: dict) -> tuple[requests.Response, list[dict]]:
    """POST one CloudEvent (binary mode, as Eventarc pushes); returns the response and the new log lines."""
    url, log = function
    before = len(log.read_text().splitlines())
    headers = {
        "ce-id": uuid.uuid4().hex,
        "ce-specversion": "1.0",
        "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/nanochat-budget-dev",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-time": "2026-06-20T10:00:00Z",
        "Content-Type": "application/json",
    }
    response = requests.post(url, data=json.dumps(data), headers=headers, timeout=60)
    lines = log.read_text().splitlines()[before:]
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("component") == "kill-switch":
            entries.append(entry)
    return response, entries


@pytest.mark.integration
def test_at_120_percent_the_gpu_group_stops_and_the_service_is_capped(apis, function):
    apis.reset()
    response, logs = post_event(function, budget_message(120.0, alertThresholdExceeded=1.0))
    assert response.status_code == 200, response.text

    assert apis.autoscalers[AUTOSCALER]["autoscalingPolicy"]["mode"] == "OFF"
    assert apis.autoscalers[AUTOSCALER]["autoscalingPolicy"]["scalingSchedules"], "the schedule is kept"
    assert apis.group["targetSize"] == 0
    assert apis.service["scaling"]["maxInstanceCount"] == 1
    # only the service-level scaling changed: same template (no new revision), traffic untouched
    assert apis.service["template"] == {
        "scaling": {"maxInstanceCount": 3},
        "containers": [{"image": "app@sha256:1"}],
    }
    assert apis.service["traffic"][0]["revision"] == "nanochat-1"

    writes = [(r["method"], r["path"].rsplit("/", 1)[-1], r["query"]) for r in apis.writes()]
    autoscaler_off = writes.index(("PATCH", "autoscalers", {"autoscaler": AUTOSCALER}))
    resize = writes.index(("POST", "resize", {"size": "0"}))
    assert autoscaler_off < resize
    assert ("PATCH", SERVICE, {"updateMask": "scaling.maxInstanceCount"}) in writes
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in apis.requests)

    actions = {(e["action"], e.get("changed")) for e in logs}
    assert {("stop", None), ("autoscaler-off", True), ("gpu-resize", True), ("service-cap", True)} <= actions
    assert all(e["severity"] in ("INFO", "NOTICE", "WARNING") for e in logs)


@pytest.mark.integration
def test_a_second_notification_changes_nothing(apis, function):
    apis.reset()
    post_event(function, budget_message(120.0))
    first_writes = len(apis.writes())
    assert first_writes >= 3

    response, logs = post_event(function, budget_message(121.0))
    assert response.status_code == 200
    assert len(apis.writes()) == first_writes, "the second message wrote again"
    assert {(e["action"], e.get("changed")) for e in logs} >= {
        ("autoscaler-off", False),
        ("gpu-resize", False),
        ("service-cap", False),
    }


@pytest.mark.integration
def test_the_threshold_alone_triggers_it(apis, function):
    """`alertThresholdExceeded: 1.0` with a cost rounded just under the amount still stops the spending."""
    apis.reset(autoscaler=False)
    response, _ = post_event(function, budget_message(99.99, alertThresholdExceeded=1.0))
    assert response.status_code == 200
    assert apis.group["targetSize"] == 0
    assert apis.service["scaling"]["maxInstanceCount"] == 1


@pytest.mark.integration
def test_at_50_percent_nothing_is_written(apis, function):
    apis.reset()
    response, logs = post_event(function, budget_message(50.0, alertThresholdExceeded=0.5))
    assert response.status_code == 200
    assert apis.requests == []
    assert apis.group["targetSize"] == 1 and "maxInstanceCount" not in apis.service["scaling"]
    assert [e["action"] for e in logs] == ["none"]
    assert "50%" in logs[0]["message"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "data",
    [
        encoded_message(b"not json"),
        encoded_message(json.dumps({"costAmount": 120.0}).encode()),  # no budgetAmount
        encoded_message(json.dumps({"costAmount": "a lot", "budgetAmount": 100}).encode()),
        encoded_message(json.dumps([1, 2]).encode()),
        {"message": {"data": "%%% not base64 %%%"}},
        {"no": "message"},
    ],
    ids=["not-json", "no-budget", "cost-not-a-number", "not-an-object", "not-base64", "no-message"],
)
def test_a_malformed_message_is_logged_and_acknowledged(apis, function, data):
    apis.reset()
    response, logs = post_event(function, data)
    assert response.status_code == 200, "an error status would make Eventarc redeliver it"
    assert apis.requests == []
    assert [(e["severity"], e["action"]) for e in logs] == [("ERROR", "ignore")]


@pytest.mark.integration
def test_an_api_failure_still_caps_the_service_and_fails_the_invocation(apis, function):
    apis.reset(deny_compute=True)
    response, logs = post_event(function, budget_message(130.0))
    assert response.status_code == 500
    assert apis.service["scaling"]["maxInstanceCount"] == 1
    errors = [e for e in logs if e["severity"] == "ERROR"]
    assert len(errors) == 1 and "HTTP 403" in errors[0]["message"]


def test_the_handler_takes_a_cloudevent_object(apis, monkeypatch):
    """In process, with the cloudevents SDK's own event type, the way functions-framework calls it."""
    from cloudevents.http import CloudEvent

    apis.reset()
    event = CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub.googleapis.com/x"},
        budget_message(100.0),
    )
    env = function_env(apis)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    kill_switch.kill_switch(event)
    assert apis.group["targetSize"] == 0 and apis.service["scaling"]["maxInstanceCount"] == 1


@pytest.mark.parametrize(
    ("payload", "spent"),
    [
        ({"costAmount": 100.0, "budgetAmount": 100.0}, True),
        ({"costAmount": 99.0, "budgetAmount": 100.0}, False),
        ({"costAmount": 99.0, "budgetAmount": 100.0, "alertThresholdExceeded": 0.9}, False),
        ({"costAmount": 99.0, "budgetAmount": 100.0, "alertThresholdExceeded": 1.0}, True),
        ({"costAmount": 0, "budgetAmount": 100}, False),
    ],
)
def test_spent_means_the_cost_reached_the_budget(payload, spent):
    note = kill_switch.parse_notification(encoded_message(json.dumps(payload).encode()))
    assert note.spent is spent
    assert note.attributes["budgetId"] == "b-1"


# --- the construct -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthesized() -> dict:
    """modules/kill_switch.py alone in a small stack, synthesized once."""
    from cdktf import TerraformStack
    from cdktf import Testing as T

    from modules.kill_switch import KillSwitch

    stack = TerraformStack(T.app(), "unit")
    KillSwitch(
        stack,
        "kill-switch",
        project=PROJECT,
        region=REGION,
        env="dev",
        topic_name="nanochat-budget-dev",
        function_name=FUNCTION,
        account_id="nanochat-kill-switch-dev",
        bucket=f"{PROJECT}-nanochat-kill-switch",
        gpu_group=GROUP,
        service_name=SERVICE,
        labels={"env": "dev", "app": "nanochat"},
        notification_channel_ids=CHANNELS,
        runtime_service_account=f"nanochat-run-dev@{PROJECT}.iam.gserviceaccount.com",
    )
    return json.loads(T.synth(stack))


def resources(synth: dict, resource_type: str) -> dict[str, dict]:
    return synth.get("resource", {}).get(resource_type, {})


def only(synth: dict, resource_type: str) -> tuple[str, dict]:
    found = resources(synth, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.items()))


@pytest.mark.slow
def test_the_function_is_triggered_by_the_budget_topic_without_retries(synthesized):
    topic_id, topic = only(synthesized, "google_pubsub_topic")
    assert topic["name"] == "nanochat-budget-dev"
    _, function = only(synthesized, "google_cloudfunctions2_function")
    trigger = function["event_trigger"]
    assert trigger["pubsub_topic"] == f"${{google_pubsub_topic.{topic_id}.id}}"
    assert trigger["event_type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert trigger["retry_policy"] == "RETRY_POLICY_DO_NOT_RETRY"
    assert trigger["trigger_region"] == REGION
    build = function["build_config"]
    assert build["runtime"] in ("python311", "python312")
    assert callable(getattr(kill_switch, build["entry_point"]))
    service = function["service_config"]
    assert service["max_instance_count"] == 1
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"


@pytest.mark.slow
def test_the_function_is_told_which_group_and_service_to_stop(synthesized):
    _, function = only(synthesized, "google_cloudfunctions2_function")
    env = function["service_config"]["environment_variables"]
    assert env["KILL_SWITCH_GPU_GROUP"] == GROUP
    assert env["KILL_SWITCH_SERVICE"] == SERVICE
    assert env["KILL_SWITCH_MAX_INSTANCES"] == "1"
    settings = kill_switch.Settings.from_env(env)  # the names the code reads are the names set
    assert (settings.project, settings.region, settings.gpu_group, settings.service) == (
        PROJECT,
        REGION,
        GROUP,
        SERVICE,
    )
    assert settings.compute_api == kill_switch.COMPUTE_API and settings.run_api == kill_switch.RUN_API


@pytest.mark.slow
def test_the_function_identity_holds_only_what_the_code_calls(synthesized):
    from modules.kill_switch import PERMISSIONS

    account_id, _ = only(synthesized, "google_service_account")
    member = f"serviceAccount:${{google_service_account.{account_id}.email}}"
    _, function = only(synthesized, "google_cloudfunctions2_function")
    assert (
        function["service_config"]["service_account_email"]
        == f"${{google_service_account.{account_id}.email}}"
    )
    assert (
        function["event_trigger"]["service_account_email"]
        == function["service_config"]["service_account_email"]
    )

    role_id, role = only(synthesized, "google_project_iam_custom_role")
    assert set(role["permissions"]) == set(PERMISSIONS)
    assert not [p for p in role["permissions"] if p.endswith((".create", ".delete", ".setIamPolicy"))]
    project_roles = {
        m["role"]
        for m in resources(synthesized, "google_project_iam_member").values()
        if m["member"] == member
    }
    assert project_roles == {f"${{google_project_iam_custom_role.{role_id}.id}}"}, (
        "only the custom role, no predefined or primitive role"
    )

    (_, invoker) = only(synthesized, "google_cloud_run_v2_service_iam_member")
    assert (invoker["role"], invoker["member"]) == ("roles/run.invoker", member)
    assert invoker["name"].startswith("${google_cloudfunctions2_function.")
    (_, act_as) = only(synthesized, "google_service_account_iam_member")
    assert act_as["role"] == "roles/iam.serviceAccountUser"
    assert act_as["service_account_id"].endswith(f"nanochat-run-dev@{PROJECT}.iam.gserviceaccount.com")


@pytest.mark.slow
def test_the_budget_may_publish_to_the_topic(synthesized):
    topic_id, _ = only(synthesized, "google_pubsub_topic")
    (_, grant) = only(synthesized, "google_pubsub_topic_iam_member")
    assert grant["topic"] == f"${{google_pubsub_topic.{topic_id}.id}}"
    assert grant["role"] == "roles/pubsub.publisher"
    assert grant["member"] == "serviceAccount:billing-budget-alert@system.gserviceaccount.com"


@pytest.mark.slow
def test_the_source_object_is_named_by_the_code_it_holds(synthesized):
    from modules.kill_switch import FUNCTION_FILES, staged_source

    _, obj = only(synthesized, "google_storage_bucket_object")
    assert re.fullmatch(r"kill-switch-[0-9A-Fa-f]{16,}\.zip", obj["name"]), obj["name"]
    _, function = only(synthesized, "google_cloudfunctions2_function")
    assert function["build_config"]["source"]["storage_source"]["object"].startswith(
        "${google_storage_bucket_object."
    )
    staged = staged_source()
    shipped = sorted(p.name for p in FUNCTION_DIR.iterdir() if p.is_file() and not p.name.endswith(".pyc"))
    assert sorted(FUNCTION_FILES) == shipped == sorted(p.name for p in staged.iterdir())
    requirements = (staged / "requirements.txt").read_text()
    for package in ("functions-framework", "google-auth", "requests"):  # what main.py imports
        assert re.search(rf"^{package}\b", requirements, re.M), package
    assert (staged / "main.py").read_bytes() == (FUNCTION_DIR / "main.py").read_bytes()


# --- the "kill switch acted" alert ----------------------------------------------------------------------

ACTED_FILTER = (
    'resource.type="cloud_run_revision" AND resource.labels.service_name="nanochat-kill-switch-dev" '
    'AND jsonPayload.component="kill-switch" AND jsonPayload.event="acted"'
)
TERM = re.compile(r'([A-Za-z_][\w.]*)=(?:"([^"]*)"|(true|false))')


def as_log_entry(line: str, service_name: str = FUNCTION) -> dict:
    """One stdout line of the function as Cloud Logging stores it for a Cloud Run function (2nd gen):
    the service's `cloud_run_revision` resource, the JSON fields in `jsonPayload` (`severity` and `message`
    lifted out into the entry)."""
    payload = json.loads(line)
    severity = payload.pop("severity")
    payload.pop("message")
    resource = {"type": "cloud_run_revision", "labels": {"service_name": service_name}}
    return {"resource": resource, "severity": severity, "jsonPayload": payload}


def matches(log_filter: str, entry: dict) -> bool:
    """The filters written here: `path="text"` / `path=true|false` terms joined by AND, nothing else."""
    terms = log_filter.split(" AND ")
    for term in terms:
        found = TERM.fullmatch(term)
        assert found, f"the evaluator does not know this term: {term!r}"
        path, text, flag = found.groups()
        value: object = entry
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        expected = text if text is not None else flag == "true"
        if value is None or type(value) is not type(expected) or value != expected:
            return False
    return True


def printed_entries(capsys, apis, data: dict) -> list[dict]:
    """Run the function's handler in process on one message; its stdout lines as log entries."""
    env = function_env(apis)
    capsys.readouterr()
    kill_switch.handle(data, kill_switch.Settings.from_env(env), kill_switch.Api.from_env(env))
    return [as_log_entry(line) for line in capsys.readouterr().out.splitlines()]


def acted_policy(synth: dict) -> dict:
    found = [
        p
        for p in resources(synth, "google_monitoring_alert_policy").values()
        if "kill switch" in p["display_name"]
    ]
    assert len(found) == 1, f"expected one kill switch policy, found {len(found)}"
    return found[0]


@pytest.mark.slow
def test_the_acted_alert_matches_the_function_log_and_emails_the_channels(synthesized):
    from modules.kill_switch import RUNBOOK_URL

    policy = acted_policy(synthesized)
    assert policy["display_name"] == "nanochat dev kill switch acted"
    assert policy["severity"] == "CRITICAL"
    assert policy["notification_channels"] == CHANNELS
    (condition,) = policy["conditions"]
    assert condition["condition_matched_log"]["filter"] == ACTED_FILTER
    assert [k for k in condition if k.startswith("condition_")] == ["condition_matched_log"]
    # required by Cloud Monitoring for a log-match condition
    assert policy["alert_strategy"]["notification_rate_limit"]["period"] == "3600s"
    assert RUNBOOK_URL.endswith("/docs/runbooks/budget.md")
    assert RUNBOOK_URL in policy["documentation"]["content"]
    assert (ROOT / "docs" / "runbooks" / "budget.md").is_file()
    assert policy["user_labels"]["env"] == "dev" and policy["user_labels"]["severity"] == "critical"


@pytest.mark.slow
def test_the_acted_filter_matches_exactly_the_lines_of_a_write(apis, capsys, synthesized):
    log_filter = acted_policy(synthesized)["conditions"][0]["condition_matched_log"]["filter"]

    apis.reset()
    entries = printed_entries(capsys, apis, budget_message(120.0, alertThresholdExceeded=1.0))
    matched = [e["jsonPayload"]["action"] for e in entries if matches(log_filter, e)]
    assert matched == ["autoscaler-off", "gpu-resize", "service-cap"]
    assert apis.group["targetSize"] == 0, "the writes the lines report did happen"
    # another service's identical line does not match
    other = {**entries[-1], "resource": {"type": "cloud_run_revision", "labels": {"service_name": SERVICE}}}
    assert matches(log_filter, entries[-1]) and not matches(log_filter, other)

    # the next notification changes nothing, below the budget nothing happens: no alert
    for data in (budget_message(121.0), budget_message(50.0)):
        entries = printed_entries(capsys, apis, data)
        assert entries and not [e for e in entries if matches(log_filter, e)]


@pytest.mark.slow
def test_the_acted_alert_exists_only_where_the_kill_switch_is_on(dev, prod):
    assert dev.cfg.budget.kill_switch and not prod.cfg.budget.kill_switch
    policy = acted_policy(dev.data)
    channels = dev.of_type("google_monitoring_notification_channel")
    assert channels and sorted(policy["notification_channels"]) == sorted(
        f"${{google_monitoring_notification_channel.{name}.id}}" for name in channels
    )
    assert policy["conditions"][0]["condition_matched_log"]["filter"] == ACTED_FILTER  # dev's function
    assert not [
        p
        for p in prod.of_type("google_monitoring_alert_policy").values()
        if "kill switch" in p["display_name"]
    ]
