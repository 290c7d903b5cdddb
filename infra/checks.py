"""`make infra-check`: checkov over the synthesized stacks, plus this project's own policies.

    python -m infra.checks [--out cdktf.out] [--checkov PATH]

checkov knows many Google resources but has no checks for Cloud Run v2, managed instance groups,
billing budgets or monitoring, and cannot know this project's rules; `policy_violations` covers those:

- IAM: no primitive roles (owner/editor/viewer), no authoritative bindings or policies, no public
  members (allUsers, allAuthenticatedUsers) except the app service's invoker when the env file says so.
- Labels: every resource type that takes labels carries env, app and managed-by with the env's values.
- Cloud Run: a dedicated service account; the app has its startup probe on /ready, liveness on /health,
  the Managed Prometheus sidecar after it, CPU always allocated, and releases own image and traffic.
- GPU VMs: no public IP, no project-wide SSH keys, shielded VM, TERMINATE on host maintenance, a
  dedicated service account; the group autoheals and never takes a VM away before its replacement.
- Network: no firewall rule open to 0.0.0.0/0. Buckets: uniform access, public access prevented.
- Workload identity providers have an attribute condition; alert policies and budgets notify someone.
- First apply: one API wait (time_sleep) after every API enablement, and every other resource and data
  source depends on it.
- GPU images belong to releases: no template names an image (`nanochat-image`) or a `:latest` tag, and
  the group ignores its all-instances config (where releases set the digest) and waits until stable.
- Load balancers: a Cloud Armor policy on every external backend; plain HTTP (a port-80 rule that does
  not redirect to HTTPS) only where the env file says `gpu.insecure_http: true`.

checkov's failures are compared with `infra/checkov-skips.yaml`: an unlisted failure fails, and so does
a listed check that no longer fails anywhere.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from app.contract import HEALTH_PATH, READY_PATH
from infra.config import ENVS_DIR, ROOT, EnvConfig, load_env
from infra.main import configure_jsii

SKIPS_FILE = ROOT / "infra" / "checkov-skips.yaml"
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
REQUIRED_LABELS = ("env", "app", "managed-by")
CHECKOV_ARGS = ("--skip-download", "--compact", "--quiet", "--output", "json")


def resources(stack: dict) -> Iterator[tuple[str, str, dict]]:
    """(type, name, body) of every resource in a synthesized stack."""
    for rtype, by_name in stack.get("resource", {}).items():
        for name, body in by_name.items():
            yield rtype, name, body


@functools.cache
def label_field(resource_type: str) -> str | None:
    """The field that holds a resource type's labels (`labels`, `user_labels`), read from the provider."""
    if not resource_type.startswith("google_"):
        return None  # time_sleep: no labels
    module = importlib.import_module(f"cdktf_cdktf_provider_google.{resource_type.removeprefix('google_')}")
    cls = next(c for c in vars(module).values() if getattr(c, "TF_RESOURCE_TYPE", None) == resource_type)
    # Some types use `labels` for configuration (notification channels) and `user_labels` for labels.
    for field in ("user_labels", "labels"):
        if hasattr(cls, f"{field}_input"):
            return field
    return None


def _address(rtype: str, name: str) -> str:
    return f"{rtype}.{name}"


def _refers_to(value: str, rtype: str, name: str) -> bool:
    return f"${{{rtype}.{name}." in str(value)


def policy_violations(stack: dict, cfg: EnvConfig) -> list[str]:
    """Every breach of this project's policies in one synthesized stack, as `address: problem` lines."""
    problems: list[str] = []
    runs = {name: body for rtype, name, body in resources(stack) if rtype == "google_cloud_run_v2_service"}
    app_service = [name for name, body in runs.items() if body.get("name") == cfg.service.name]
    if len(app_service) != 1:
        problems.append(f"stack: expected one Cloud Run service named {cfg.service.name}, got {app_service}")

    for rtype, name, body in resources(stack):
        where = _address(rtype, name)
        if rtype.endswith(("_iam_binding", "_iam_policy")):
            problems.append(f"{where}: authoritative IAM ({rtype}); use *_iam_member")
        role = body.get("role")
        if role in PRIMITIVE_ROLES:
            problems.append(f"{where}: primitive role {role}")
        if body.get("member") in PUBLIC_MEMBERS:
            allowed = (
                cfg.service.public
                and rtype == "google_cloud_run_v2_service_iam_member"
                and role == "roles/run.invoker"
                and any(
                    _refers_to(body.get("name", ""), "google_cloud_run_v2_service", s) for s in app_service
                )
            )
            if not allowed:
                problems.append(f"{where}: public member {body['member']} with {role}")

        field = label_field(rtype)
        if field:
            labels = body.get(field) or {}
            wrong = [k for k in REQUIRED_LABELS if labels.get(k) != cfg.common_labels[k]]
            if wrong:
                problems.append(f"{where}: {field} missing or wrong: {', '.join(wrong)}")

    for name, body in runs.items():
        where = _address("google_cloud_run_v2_service", name)
        template = body.get("template", {})
        if "${google_service_account." not in str(template.get("service_account", "")):
            problems.append(f"{where}: runs as the default compute service account")
        if name in app_service:
            problems += [f"{where}: {p}" for p in _app_service_problems(body)]

    for rtype, name, body in resources(stack):
        where = _address(rtype, name)
        if rtype == "google_compute_instance_template":
            problems += [f"{where}: {p}" for p in _instance_template_problems(body)]
        elif rtype == "google_compute_region_instance_group_manager":
            if "all_instances_config" not in body.get("lifecycle", {}).get("ignore_changes", []):
                problems.append(f"{where}: Terraform would undo the released image (all_instances_config)")
            if not body.get("wait_for_instances"):
                problems.append(f"{where}: does not wait for its VMs, so creation failures go unreported")
            if not body.get("auto_healing_policies", {}).get("health_check"):
                problems.append(f"{where}: no autohealing health check")
            if body.get("update_policy", {}).get("max_unavailable_fixed") != 0:
                problems.append(f"{where}: a rolling update may take VMs away before replacing them")
        elif rtype == "google_compute_firewall" and "0.0.0.0/0" in body.get("source_ranges", []):
            problems.append(f"{where}: open to 0.0.0.0/0")
        elif rtype == "google_storage_bucket":
            if body.get("public_access_prevention") != "enforced" or not body.get(
                "uniform_bucket_level_access"
            ):
                problems.append(f"{where}: public access not prevented or ACLs allowed")
        elif rtype == "google_iam_workload_identity_pool_provider" and not body.get("attribute_condition"):
            problems.append(f"{where}: no attribute condition: any GitHub repository could get tokens")
        elif rtype in ("google_monitoring_alert_policy", "google_billing_budget") and not (
            body.get("notification_channels")
            or body.get("all_updates_rule", {}).get("monitoring_notification_channels")
            or body.get("user_labels", {}).get("notified-by") == "grafana"  # Grafana emails it
        ):
            problems.append(f"{where}: notifies nobody")
        elif (
            rtype == "google_compute_backend_service"
            and body.get("load_balancing_scheme", "").startswith("EXTERNAL")
            and not body.get("security_policy")
        ):
            problems.append(f"{where}: no Cloud Armor security policy")
    problems += _api_wait_problems(stack)
    problems += _plain_http_problems(stack, cfg)
    return problems


def _api_wait_problems(stack: dict) -> list[str]:
    waits = stack.get("resource", {}).get("time_sleep", {})
    apis = {
        f"google_project_service.{n}" for n in stack.get("resource", {}).get("google_project_service", {})
    }
    if len(waits) != 1:
        return [f"stack: expected one API wait (time_sleep) after the API enablements, got {len(waits)}"]
    ((name, wait),) = waits.items()
    address = f"time_sleep.{name}"
    problems = []
    if set(wait.get("depends_on", [])) != apis:
        problems.append(f"{address}: does not wait for exactly every API enablement")
    bodies = [
        (f"{rtype}.{n}", body)
        for rtype, by_name in stack.get("resource", {}).items()
        if rtype not in ("google_project_service", "time_sleep")
        for n, body in by_name.items()
    ]
    bodies += [
        (f"data.{dtype}.{n}", body)
        for dtype, by_name in stack.get("data", {}).items()
        for n, body in by_name.items()
    ]
    problems += [
        f"{where}: does not wait for the APIs ({address})"
        for where, body in bodies
        if address not in body.get("depends_on", [])
    ]
    return problems


def _plain_http_problems(stack: dict, cfg: EnvConfig) -> list[str]:
    resources_ = stack.get("resource", {})
    redirecting = {
        name
        for name, body in resources_.get("google_compute_url_map", {}).items()
        if body.get("default_url_redirect", {}).get("https_redirect")
    }
    plain_proxies = {
        name
        for name, body in resources_.get("google_compute_target_http_proxy", {}).items()
        if not any(_refers_to(body.get("url_map", ""), "google_compute_url_map", m) for m in redirecting)
    }
    problems = []
    for name, rule in resources_.get("google_compute_global_forwarding_rule", {}).items():
        serves_plain = any(
            _refers_to(rule.get("target", ""), "google_compute_target_http_proxy", p) for p in plain_proxies
        )
        if serves_plain and not cfg.gpu.insecure_http:
            problems.append(
                f"google_compute_global_forwarding_rule.{name}: plain HTTP without gpu.insecure_http: true "
                "(set gpu.domain for HTTPS)"
            )
    return problems


def _app_service_problems(body: dict) -> list[str]:
    problems = []
    containers = body.get("template", {}).get("containers", [])
    app = next((c for c in containers if c.get("ports")), None)
    if app is None:
        return ["no container serves a port"]
    if app.get("startup_probe", {}).get("http_get", {}).get("path") != READY_PATH:
        problems.append(f"startup probe is not GET {READY_PATH}")
    if app.get("liveness_probe", {}).get("http_get", {}).get("path") != HEALTH_PATH:
        problems.append(f"liveness probe is not GET {HEALTH_PATH}")
    if app.get("resources", {}).get("cpu_idle") is not False:
        problems.append("CPU is throttled between requests (cpu_idle), so metric scrapes stall")
    sidecars = [c for c in containers if c is not app]
    if not any(
        "cloud-run-gmp-sidecar" in c.get("image", "") and app["name"] in c.get("depends_on", [])
        for c in sidecars
    ):
        problems.append("no Managed Prometheus sidecar that starts after the app")
    if any(c.get("image", "").endswith(":latest") for c in sidecars):
        problems.append("a sidecar image is not pinned")
    ignored = set(body.get("lifecycle", {}).get("ignore_changes", []))
    if not {"template[0].containers[0].image", "traffic"} <= ignored:
        problems.append("Terraform would undo releases: image and traffic must be ignored")
    return problems


def _instance_template_problems(body: dict) -> list[str]:
    problems = []
    if any(nic.get("access_config") for nic in body.get("network_interface", [])):
        problems.append("VMs get a public IP")
    if str(body.get("metadata", {}).get("block-project-ssh-keys", "")).lower() != "true":
        problems.append("project-wide SSH keys are allowed")
    shielded = body.get("shielded_instance_config", {})
    if not (shielded.get("enable_vtpm") and shielded.get("enable_integrity_monitoring")):
        problems.append("not a shielded VM (vTPM and integrity monitoring)")
    if body.get("guest_accelerator") and body.get("scheduling", {}).get("on_host_maintenance") != "TERMINATE":
        problems.append("GPU VMs must TERMINATE on host maintenance")
    if "${google_service_account." not in str(body.get("service_account", {}).get("email", "")):
        problems.append("runs as the default compute service account")
    metadata = body.get("metadata", {})
    if "nanochat-image" in metadata or ":latest" in json.dumps(metadata):
        problems.append("names an image: releases own it (a digest in the group's all-instances config)")
    return problems


def load_skips(path: Path) -> dict[str, str]:
    """check id -> reason; every entry needs both, once."""
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{id, reason}} entries")
    skips = {}
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("id") or not str(entry.get("reason", "")).strip():
            raise ValueError(f"{path}: every entry needs an id and a reason, got {entry!r}")
        if entry["id"] in skips:
            raise ValueError(f"{path}: {entry['id']} is listed twice")
        skips[entry["id"]] = entry["reason"]
    return skips


def checkov_failures(checkov: str, stack_dir: Path) -> list[tuple[str, str]]:
    """(check id, resource) for every check checkov fails on one synthesized stack."""
    result = subprocess.run(
        [checkov, "--directory", str(stack_dir), "--framework", "terraform_json", *CHECKOV_ARGS],
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 1):
        raise RuntimeError(
            f"checkov failed on {stack_dir} (exit {result.returncode}): {result.stderr[-2000:]}"
        )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failures = []
    for report in reports:
        if report.get("summary", {}).get("parsing_errors"):
            raise RuntimeError(f"checkov could not parse {stack_dir}")
        for check in report.get("results", {}).get("failed_checks", []):
            failures.append((check["check_id"], check["resource"]))
    return failures


def find_checkov() -> str | None:
    local = ROOT / ".venv-infra" / "bin" / "checkov"
    return str(local) if local.exists() else shutil.which("checkov")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "cdktf.out", help="the synth output folder")
    parser.add_argument("--envs", type=Path, default=ENVS_DIR)
    parser.add_argument("--checkov", default=None, help="checkov executable (default: .venv-infra, PATH)")
    parser.add_argument("--skips", type=Path, default=SKIPS_FILE, help="checkov checks failing on purpose")
    args = parser.parse_args(argv)
    configure_jsii()  # label_field reads the provider's bindings

    stack_dirs = sorted(p for p in (args.out / "stacks").glob("*") if (p / "cdk.tf.json").is_file())
    if not stack_dirs:
        print(f"infra-check: no synthesized stacks in {args.out}/stacks; run `make synth`", file=sys.stderr)
        return 2
    checkov = args.checkov or find_checkov()
    if not checkov:
        print(
            "infra-check: checkov not found; `make infra-check` installs it in .venv-infra", file=sys.stderr
        )
        return 2
    skips = load_skips(args.skips)

    problems, skipped_ids = [], set()
    for stack_dir in stack_dirs:
        cfg = load_env(args.envs / f"{stack_dir.name}.yaml")
        stack = json.loads((stack_dir / "cdk.tf.json").read_text())
        problems += [f"{stack_dir.name}: policy: {p}" for p in policy_violations(stack, cfg)]
        for check_id, resource in checkov_failures(checkov, stack_dir):
            if check_id in skips:
                skipped_ids.add(check_id)
            else:
                problems.append(f"{stack_dir.name}: checkov {check_id} fails for {resource}")
        print(f"infra-check: {stack_dir.name}: checked")
    stale = sorted(set(skips) - skipped_ids)
    problems += [f"{args.skips.name}: {check_id} no longer fails anywhere: remove it" for check_id in stale]
    for problem in problems:
        print(f"infra-check: {problem}", file=sys.stderr)
    print(
        f"infra-check: {len(stack_dirs)} stacks, {len(problems)} problems, "
        f"{len(skipped_ids)} checkov checks skipped by {args.skips.name}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
