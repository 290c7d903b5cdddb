"""The budget kill switch: a Cloud Run function (2nd gen) that stops the spending when the budget is spent.

The env's Cloud Billing budget publishes its state to a Pub/Sub topic several times a day; Eventarc
delivers each message here as a CloudEvent (`google.cloud.pubsub.topic.v1.messagePublished`). The message
data is the budget notification (schema 1.0, JSON): `costAmount`, `budgetAmount`, `currencyCode`,
`budgetDisplayName`, `costIntervalStart`, and `alertThresholdExceeded` once a threshold was crossed; the
message attributes carry `billingAccountId`, `budgetId` and `schemaVersion`.

When the cost reached the budget (`costAmount >= budgetAmount`, or `alertThresholdExceeded >= 1.0`):
1. the GPU group (a regional managed instance group) stops: its autoscaler, if any, is set to mode OFF
   (the autoscaler and its schedules stay declared, only switched off), then the group is resized to 0;
2. the Cloud Run service is capped at KILL_SWITCH_MAX_INSTANCES (1) through its service-level
   `scaling.maxInstanceCount`, which applies at once to every revision that serves traffic, without a new
   revision (a revision-level max would make a new 0%-traffic revision: releases pin the traffic).
Each step reads first and writes only what differs, so a repeated notification changes nothing. Below the
budget the function does nothing and says so. It never restarts anything: re-arming is a person's act
(`scripts/gpu.sh up`, a `cdktf deploy`, or raising the service-level max again).

Every decision and action is one JSON line on stdout (Cloud Logging reads `severity` and `message`), with
`component` "kill-switch", the `action`, and for the GPU and service steps `changed`. A line whose write
went through also carries `event` "acted": the "kill switch acted" alert (modules/kill_switch.py) matches
exactly that field, so a repeated notification that changes nothing alerts nobody.
A message that cannot be read is logged and acknowledged: raising would only make Eventarc redeliver it.
A failed API call is raised after both steps were tried (the trigger does not retry; the next budget
notification, hours later, tries again).

Configuration (environment, set by modules/kill_switch.py): KILL_SWITCH_PROJECT, KILL_SWITCH_REGION,
KILL_SWITCH_GPU_GROUP (empty: no GPU group), KILL_SWITCH_SERVICE, KILL_SWITCH_MAX_INSTANCES.
For local tests: KILL_SWITCH_COMPUTE_API and KILL_SWITCH_RUN_API replace the API base URLs, and
KILL_SWITCH_ACCESS_TOKEN replaces the metadata server's credentials with a fixed bearer token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import functions_framework
import google.auth
import google.oauth2.credentials
from google.auth.transport.requests import AuthorizedSession

COMPUTE_API = "https://compute.googleapis.com/compute/v1"
RUN_API = "https://run.googleapis.com/v2"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
OPERATION_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 60.0
COMPONENT = "kill-switch"  # every line's `component`
ACTED = "acted"  # the `event` of a line saying a write went through (what the alert policy matches)


class KillSwitchError(RuntimeError):
    """An API call failed; the message says which and why."""


class NotFound(KillSwitchError):
    """The API answered 404 (the group or service does not exist)."""


class BadNotification(ValueError):
    """The Pub/Sub message is not a budget notification."""


@dataclass(frozen=True)
class Notification:
    cost: float
    budget: float
    threshold_exceeded: float | None
    currency: str
    budget_name: str
    interval_start: str
    attributes: dict

    @property
    def spent(self) -> bool:
        """The budget is used up (cost reached the amount, or the 100% threshold was crossed)."""
        return self.cost >= self.budget or (self.threshold_exceeded or 0.0) >= 1.0


@dataclass(frozen=True)
class Settings:
    project: str
    region: str
    gpu_group: str
    service: str
    max_instances: int
    compute_api: str
    run_api: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        missing = [k for k in ("KILL_SWITCH_PROJECT", "KILL_SWITCH_REGION") if not env.get(k)]
        if missing:
            raise KillSwitchError(f"not configured: {', '.join(missing)} unset")
        return cls(
            project=env["KILL_SWITCH_PROJECT"],
            region=env["KILL_SWITCH_REGION"],
            gpu_group=env.get("KILL_SWITCH_GPU_GROUP", ""),
            service=env.get("KILL_SWITCH_SERVICE", ""),
            max_instances=int(env.get("KILL_SWITCH_MAX_INSTANCES", "1")),
            compute_api=env.get("KILL_SWITCH_COMPUTE_API", COMPUTE_API).rstrip("/"),
            run_api=env.get("KILL_SWITCH_RUN_API", RUN_API).rstrip("/"),
        )


def log(severity: str, message: str, **fields) -> None:
    print(json.dumps({"severity": severity, "message": message, "component": COMPONENT, **fields}))
    sys.stdout.flush()


def _number(payload: dict, key: str) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadNotification(f"{key} is missing or not a number: {value!r}")
    return float(value)


def parse_notification(event_data: object) -> Notification:
    """The budget notification inside an Eventarc Pub/Sub CloudEvent's data ({"message": {...}})."""
    message = event_data.get("message") if isinstance(event_data, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise BadNotification("the event carries no Pub/Sub message data")
    try:
        payload = json.loads(base64.b64decode(message["data"], validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BadNotification(f"the message data is not base64 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadNotification("the message data is not a JSON object")
    budget = _number(payload, "budgetAmount")
    if budget <= 0:
        raise BadNotification(f"budgetAmount must be positive, got {budget}")
    threshold = payload.get("alertThresholdExceeded")
    return Notification(
        cost=_number(payload, "costAmount"),
        budget=budget,
        threshold_exceeded=float(threshold) if isinstance(threshold, int | float) else None,
        currency=str(payload.get("currencyCode", "")),
        budget_name=str(payload.get("budgetDisplayName", "")),
        interval_start=str(payload.get("costIntervalStart", "")),
        attributes=dict(message.get("attributes") or {}),
    )


class Api:
    """JSON over HTTPS to Google APIs with the function's credentials (or a fixed token in tests)."""

    def __init__(self, session: AuthorizedSession) -> None:
        self.session = session

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Api:
        token = env.get("KILL_SWITCH_ACCESS_TOKEN")
        if token:
            credentials = google.oauth2.credentials.Credentials(token=token)
        else:
            credentials, _ = google.auth.default(scopes=SCOPES)
        return cls(AuthorizedSession(credentials))

    def call(self, method: str, url: str, *, params: dict | None = None, body: dict | None = None) -> dict:
        response = self.session.request(method, url, params=params, json=body, timeout=REQUEST_TIMEOUT_S)
        if response.status_code == 404:
            raise NotFound(url)
        if response.status_code >= 400:
            try:
                detail = response.json().get("error", {}).get("message", response.text)
            except ValueError:
                detail = response.text
            raise KillSwitchError(f"{method} {url}: HTTP {response.status_code}: {detail}")
        return response.json() if response.content else {}


def _wait_compute(api: Api, settings: Settings, operation: dict) -> None:
    """Wait for a regional Compute operation (regionOperations.wait returns when DONE or after ~2 min)."""
    deadline = time.monotonic() + OPERATION_TIMEOUT_S
    url = f"{settings.compute_api}/projects/{settings.project}/regions/{settings.region}/operations"
    while operation.get("status") != "DONE":
        if time.monotonic() > deadline:
            raise KillSwitchError(f"operation {operation.get('name')} not done after {OPERATION_TIMEOUT_S}s")
        operation = api.call("POST", f"{url}/{operation['name']}/wait")
    errors = operation.get("error", {}).get("errors")
    if errors:
        raise KillSwitchError(f"operation {operation.get('name')} failed: {errors}")


def _wait_run(api: Api, settings: Settings, operation: dict) -> None:
    """Wait for a Cloud Run (v2) long-running operation."""
    deadline = time.monotonic() + OPERATION_TIMEOUT_S
    while not operation.get("done"):
        if time.monotonic() > deadline:
            raise KillSwitchError(f"operation {operation.get('name')} not done after {OPERATION_TIMEOUT_S}s")
        time.sleep(1.0)
        operation = api.call("GET", f"{settings.run_api}/{operation['name']}")
    if operation.get("error"):
        raise KillSwitchError(f"operation {operation.get('name')} failed: {operation['error']}")


def stop_gpu_group(api: Api, settings: Settings) -> None:
    """Autoscaler (if any) to mode OFF, then the regional group to 0 instances."""
    if not settings.gpu_group:
        log("INFO", "no GPU group configured: nothing to stop", action="gpu-group")
        return
    region_url = f"{settings.compute_api}/projects/{settings.project}/regions/{settings.region}"
    group_url = f"{region_url}/instanceGroupManagers/{settings.gpu_group}"
    try:
        group = api.call("GET", group_url)
    except NotFound:
        log("WARNING", "GPU group not found: nothing to stop", action="gpu-group", group=settings.gpu_group)
        return

    autoscaler_link = group.get("status", {}).get("autoscaler")
    if autoscaler_link:
        name = autoscaler_link.rstrip("/").rsplit("/", 1)[-1]
        autoscaler = api.call("GET", f"{region_url}/autoscalers/{name}")
        mode = autoscaler.get("autoscalingPolicy", {}).get("mode", "ON")
        if mode == "OFF":
            log("INFO", "autoscaler already off", action="autoscaler-off", autoscaler=name, changed=False)
        else:
            operation = api.call(
                "PATCH",
                f"{region_url}/autoscalers",
                params={"autoscaler": name},
                body={"name": name, "autoscalingPolicy": {"mode": "OFF"}},
            )
            _wait_compute(api, settings, operation)
            log(
                "NOTICE",
                "autoscaler turned off",
                action="autoscaler-off",
                autoscaler=name,
                was=mode,
                changed=True,
                event=ACTED,
            )

    size = group.get("targetSize", 0)
    if size == 0:
        log("INFO", "GPU group already at 0", action="gpu-resize", group=settings.gpu_group, changed=False)
        return
    operation = api.call("POST", f"{group_url}/resize", params={"size": 0})
    _wait_compute(api, settings, operation)
    log(
        "NOTICE",
        "GPU group resized to 0",
        action="gpu-resize",
        group=settings.gpu_group,
        was=size,
        changed=True,
        event=ACTED,
    )


def cap_service(api: Api, settings: Settings) -> None:
    """Service-level `scaling.maxInstanceCount` to the cap (and the service-level min no higher)."""
    if not settings.service:
        log("INFO", "no Cloud Run service configured: nothing to cap", action="service-cap")
        return
    cap = settings.max_instances
    location = f"{settings.run_api}/projects/{settings.project}/locations/{settings.region}"
    url = f"{location}/services/{settings.service}"
    try:
        service = api.call("GET", url)
    except NotFound:
        log("WARNING", "Cloud Run service not found", action="service-cap", service=settings.service)
        return
    scaling = dict(service.get("scaling") or {})
    current_max = scaling.get("maxInstanceCount")
    current_min = scaling.get("minInstanceCount", 0)
    mask = []
    if not current_max or current_max > cap:  # 0 or absent: no service-level limit
        scaling["maxInstanceCount"] = cap
        mask.append("scaling.maxInstanceCount")
    if current_min > cap:
        scaling["minInstanceCount"] = cap
        mask.append("scaling.minInstanceCount")
    if not mask:
        log(
            "INFO",
            "Cloud Run service already capped",
            action="service-cap",
            service=settings.service,
            max_instances=current_max,
            changed=False,
        )
        return
    operation = api.call("PATCH", url, params={"updateMask": ",".join(mask)}, body={"scaling": scaling})
    _wait_run(api, settings, operation)
    log(
        "NOTICE",
        f"Cloud Run service capped at {cap} instance(s)",
        action="service-cap",
        service=settings.service,
        was=current_max,
        max_instances=cap,
        changed=True,
        event=ACTED,
    )


def handle(event_data: object, settings: Settings, api: Api) -> str:
    """Act on one notification; returns what was done: "malformed", "below-budget" or "stopped"."""
    try:
        note = parse_notification(event_data)
    except BadNotification as exc:
        log("ERROR", f"ignored a message that is not a budget notification: {exc}", action="ignore")
        return "malformed"
    facts = {
        "cost": note.cost,
        "budget": note.budget,
        "currency": note.currency,
        "budget_name": note.budget_name,
        "interval_start": note.interval_start,
        "budget_id": note.attributes.get("budgetId", ""),
    }
    if not note.spent:
        log(
            "INFO", f"below the budget ({note.cost / note.budget:.0%}): nothing to do", action="none", **facts
        )
        return "below-budget"
    log(
        "WARNING",
        f"budget spent ({note.cost / note.budget:.0%}): stopping the spending",
        action="stop",
        **facts,
    )
    failures = []
    for step in (stop_gpu_group, cap_service):
        try:
            step(api, settings)
        except KillSwitchError as exc:
            log("ERROR", str(exc), action=step.__name__)
            failures.append(str(exc))
    if failures:
        raise KillSwitchError("; ".join(failures))
    return "stopped"


@functions_framework.cloud_event
def kill_switch(cloud_event) -> None:
    """The entry point (Eventarc Pub/Sub CloudEvent)."""
    handle(cloud_event.data, Settings.from_env(), Api.from_env())
