"""infra.checks: the project's own policies and the checkov run, on the synthesized stacks.

The real stacks pass; each policy is shown to catch a breach by planting it in a copy of a stack.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from infra.checks import (
    SKIPS_FILE,
    checkov_failures,
    find_checkov,
    label_field,
    load_skips,
    main,
    policy_violations,
)

pytestmark = pytest.mark.slow  # uses the session's synth


def find(stack: dict, resource_type: str, **match) -> dict:
    """The body (mutable, inside `stack`) of the one resource of a type whose fields equal `match`."""
    (body,) = [
        b for b in stack["resource"][resource_type].values() if all(b.get(k) == v for k, v in match.items())
    ]
    return body


def add(stack: dict, resource_type: str, body: dict) -> None:
    stack["resource"].setdefault(resource_type, {})["planted"] = body


def test_the_real_stacks_break_no_policy(stacks):
    for synth in stacks.values():
        assert policy_violations(synth.data, synth.cfg) == []


def _app(stack, cfg):
    return find(stack, "google_cloud_run_v2_service", name=cfg.service.name)


def _app_container(stack, cfg):
    return _app(stack, cfg)["template"]["containers"][0]


BREACHES = {
    "primitive role": (
        lambda s, c: add(
            s, "google_project_iam_member", {"project": "p", "role": "roles/editor", "member": "user:a@b.c"}
        ),
        r"google_project_iam_member\.planted: primitive role roles/editor",
    ),
    "authoritative binding": (
        lambda s, c: add(s, "google_project_iam_binding", {"role": "roles/run.invoker", "members": []}),
        r"authoritative IAM \(google_project_iam_binding\)",
    ),
    "public grafana": (
        lambda s, c: add(
            s,
            "google_cloud_run_v2_service_iam_member",
            {
                "name": "${google_cloud_run_v2_service.grafana_service_1.name}",
                "role": "roles/run.invoker",
                "member": "allUsers",
            },
        ),
        r"public member allUsers with roles/run.invoker",
    ),
    "missing labels": (
        lambda s, c: find(s, "google_artifact_registry_repository").pop("labels"),
        r"google_artifact_registry_repository\..*: labels missing or wrong: env, app, managed-by",
    ),
    "wrong env label on an alert policy": (
        # (foundation has no alert policies yet: plant one)
        lambda s, c: add(
            s,
            "google_monitoring_alert_policy",
            {"user_labels": {**c.common_labels, "env": "x"}, "notification_channels": ["c"]},
        ),
        r"google_monitoring_alert_policy\..*: user_labels missing or wrong: env",
    ),
    "open firewall": (
        lambda s, c: find(s, "google_compute_firewall")["source_ranges"].append("0.0.0.0/0"),
        r"open to 0\.0\.0\.0/0",
    ),
    "public IP on GPU VMs": (
        lambda s, c: find(s, "google_compute_instance_template")["network_interface"][0].update(
            access_config=[{}]
        ),
        r"VMs get a public IP",
    ),
    "GPU VMs that migrate": (
        lambda s, c: find(s, "google_compute_instance_template")["scheduling"].update(
            on_host_maintenance="MIGRATE"
        ),
        r"GPU VMs must TERMINATE on host maintenance",
    ),
    "project SSH keys": (
        lambda s, c: find(s, "google_compute_instance_template")["metadata"].pop("block-project-ssh-keys"),
        r"project-wide SSH keys are allowed",
    ),
    "not shielded": (
        lambda s, c: find(s, "google_compute_instance_template")["shielded_instance_config"].update(
            enable_vtpm=False
        ),
        r"not a shielded VM",
    ),
    "GPU VMs as the default service account": (
        lambda s, c: find(s, "google_compute_instance_template").pop("service_account"),
        r"google_compute_instance_template\..*: runs as the default compute service account",
    ),
    "no autohealing": (
        lambda s, c: find(s, "google_compute_region_instance_group_manager").pop("auto_healing_policies"),
        r"no autohealing health check",
    ),
    "rolling update that takes VMs away": (
        lambda s, c: find(s, "google_compute_region_instance_group_manager")["update_policy"].update(
            max_unavailable_fixed=1
        ),
        r"may take VMs away before replacing them",
    ),
    "public bucket": (
        lambda s, c: find(s, "google_storage_bucket", name=f"{c.project}-nanochat-build").update(
            public_access_prevention="inherited"
        ),
        r"public access not prevented",
    ),
    "open workload identity": (
        lambda s, c: find(s, "google_iam_workload_identity_pool_provider").pop("attribute_condition"),
        r"no attribute condition",
    ),
    "silent alert": (
        lambda s, c: add(
            s, "google_monitoring_alert_policy", {"user_labels": c.common_labels, "notification_channels": []}
        ),
        r"google_monitoring_alert_policy\..*: notifies nobody",
    ),
    "silent budget": (
        lambda s, c: find(s, "google_billing_budget")["all_updates_rule"].pop(
            "monitoring_notification_channels"
        ),
        r"google_billing_budget\..*: notifies nobody",
    ),
    "Cloud Run as the default service account": (
        lambda s, c: _app(s, c)["template"].pop("service_account"),
        r"google_cloud_run_v2_service\..*: runs as the default compute service account",
    ),
    "startup probe on /": (
        lambda s, c: _app_container(s, c)["startup_probe"]["http_get"].update(path="/"),
        r"startup probe is not GET /ready",
    ),
    "no liveness probe": (
        lambda s, c: _app_container(s, c).pop("liveness_probe"),
        r"liveness probe is not GET /health",
    ),
    "throttled CPU": (
        lambda s, c: _app_container(s, c)["resources"].update(cpu_idle=True),
        r"CPU is throttled between requests",
    ),
    "no sidecar": (
        lambda s, c: _app(s, c)["template"]["containers"].pop(1),
        r"no Managed Prometheus sidecar that starts after the app",
    ),
    "sidecar not after the app": (
        lambda s, c: _app(s, c)["template"]["containers"][1].pop("depends_on"),
        r"no Managed Prometheus sidecar that starts after the app",
    ),
    "Terraform undoes releases": (
        lambda s, c: _app(s, c).pop("lifecycle"),
        r"Terraform would undo releases",
    ),
    "a resource that does not wait for the APIs": (
        lambda s, c: add(s, "google_pubsub_topic", {"name": "t"}),
        r"google_pubsub_topic\.planted: does not wait for the APIs",
    ),
    "no API wait": (
        lambda s, c: s["resource"].pop("time_sleep"),
        r"expected one API wait",
    ),
    "a wait that misses an API": (
        lambda s, c: next(iter(s["resource"]["time_sleep"].values()))["depends_on"].pop(),
        r"does not wait for exactly every API enablement",
    ),
    "a GPU template with a mutable image": (
        lambda s, c: next(iter(s["resource"]["google_compute_instance_template"].values()))[
            "metadata"
        ].update({"nanochat-image": "r/nanochat-gpu:latest"}),
        r"names an image: releases own it",
    ),
    "a GPU group that undoes releases": (
        lambda s, c: next(iter(s["resource"]["google_compute_region_instance_group_manager"].values())).pop(
            "lifecycle"
        ),
        r"would undo the released image",
    ),
    "a GPU group that hides creation failures": (
        lambda s, c: next(
            iter(s["resource"]["google_compute_region_instance_group_manager"].values())
        ).update(wait_for_instances=False),
        r"does not wait for its VMs",
    ),
    "a backend without Cloud Armor": (
        lambda s, c: add(
            s, "google_compute_backend_service", {"name": "b", "load_balancing_scheme": "EXTERNAL_MANAGED"}
        ),
        r"google_compute_backend_service\.planted: no Cloud Armor security policy",
    ),
    "plain HTTP without insecure_http": (
        lambda s, c: (
            add(
                s,
                "google_compute_target_http_proxy",
                {"name": "p", "url_map": "${google_compute_url_map.x.id}"},
            ),
            s["resource"]
            .setdefault("google_compute_global_forwarding_rule", {})
            .update(plain={"port_range": "80", "target": "${google_compute_target_http_proxy.planted.id}"}),
        ),
        r"google_compute_global_forwarding_rule\.plain: plain HTTP without gpu.insecure_http",
    ),
}


def test_plain_http_is_allowed_when_the_env_says_insecure_http_and_a_redirect_is_not_plain(variants):
    devrel = variants["devrel"]  # insecure_http: true, one port-80 rule
    assert policy_violations(devrel.data, devrel.cfg) == []
    prodmon = variants["prodmon"]  # HTTPS, and port 80 redirects
    assert policy_violations(prodmon.data, prodmon.cfg) == []
    strict = devrel.cfg.model_copy(update={"gpu": devrel.cfg.gpu.model_copy(update={"insecure_http": False})})
    assert any("plain HTTP" in p for p in policy_violations(devrel.data, strict))


@pytest.mark.parametrize("breach", sorted(BREACHES))
def test_each_policy_catches_its_breach(dev, breach):
    plant, message = BREACHES[breach]
    stack = dev.data
    plant(stack, dev.cfg)
    problems = policy_violations(stack, dev.cfg)
    assert any(re.search(message, p) for p in problems), problems


def test_allusers_is_allowed_only_on_the_app_service_and_only_when_configured(dev, prod):
    assert prod.cfg.service.public and prod.one("google_cloud_run_v2_service_iam_member", member="allUsers")
    assert policy_violations(prod.data, prod.cfg) == []
    stack = dev.data  # dev says public: false
    app_name = next(
        n for n, b in stack["resource"]["google_cloud_run_v2_service"].items() if b["name"] == "nanochat"
    )
    invoker = {"name": f"${{google_cloud_run_v2_service.{app_name}.name}}", "role": "roles/run.invoker"}
    add(stack, "google_cloud_run_v2_service_iam_member", invoker | {"member": "allUsers"})
    assert any("planted: public member allUsers" in p for p in policy_violations(stack, dev.cfg))


def test_label_fields_come_from_the_provider_bindings():
    assert label_field("google_storage_bucket") == "labels"
    assert label_field("google_cloud_run_v2_service") == "labels"
    assert label_field("google_monitoring_notification_channel") == "user_labels"  # `labels` is its config
    assert label_field("google_monitoring_alert_policy") == "user_labels"
    assert label_field("google_project_service") is None
    assert label_field("google_compute_region_instance_group_manager") is None


def test_every_skip_has_a_reason():
    skips = load_skips(SKIPS_FILE)
    assert skips and all(len(reason) > 40 for reason in skips.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- id: CKV_GCP_1\n", "every entry needs an id and a reason"),
        ("- id: CKV_GCP_1\n  reason: ' '\n", "every entry needs an id and a reason"),
        ("- reason: because\n", "every entry needs an id and a reason"),
        ("- {id: A, reason: r}\n- {id: A, reason: r}\n", "A is listed twice"),
        ("id: A\n", "expected a list"),
    ],
)
def test_bad_skip_files_are_errors(tmp_path, text, message):
    path = tmp_path / "skips.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_skips(path)


@pytest.fixture(scope="module")
def checkov() -> str:
    path = find_checkov()
    if not path:
        pytest.skip(
            "checkov not installed: `make infra-check` installs it in .venv-infra (CI: run that first)"
        )
    return path


@pytest.mark.integration
def test_infra_check_passes_on_the_real_stacks(stacks, synth_out, checkov, capsys):
    assert main(["--out", str(synth_out), "--checkov", checkov]) == 0, capsys.readouterr().err
    assert "2 stacks, 0 problems" in capsys.readouterr().out


@pytest.mark.integration
def test_infra_check_fails_on_unlisted_failures_and_stale_skips(stacks, synth_out, checkov, tmp_path, capsys):
    skips = load_skips(SKIPS_FILE)
    dropped = sorted(skips)[0]
    entries = [{"id": i, "reason": r} for i, r in skips.items() if i != dropped]
    entries.append({"id": "CKV_GCP_999", "reason": "a check that never fails here"})
    (tmp_path / "skips.yaml").write_text(yaml.safe_dump(entries))
    assert main(["--out", str(synth_out), "--checkov", checkov, "--skips", str(tmp_path / "skips.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"checkov {dropped} fails for" in err
    assert "CKV_GCP_999 no longer fails anywhere" in err


@pytest.mark.integration
def test_checkov_reads_the_synthesized_json(dev, checkov, tmp_path):
    """A planted weakness (a bucket with ACLs) is reported by checkov itself, not only by our policies."""
    stack = dev.data
    find(stack, "google_storage_bucket", name=f"{dev.cfg.project}-nanochat-build")[
        "uniform_bucket_level_access"
    ] = False
    (tmp_path / "cdk.tf.json").write_text(json.dumps(stack))
    failures = {check for check, _ in checkov_failures(checkov, tmp_path)}
    assert "CKV_GCP_29" in failures  # uniform bucket-level access
    assert failures - {"CKV_GCP_29"} == set(load_skips(SKIPS_FILE))
