"""Each construct of `modules/` alone, from a small example input, in a cdktf Testing stack of its own.

The stacks in test_stacks.py compose every module from the env files; these show what one module makes
from its typed input and the ids, names and emails it takes (grafana, monitoring, budget and the kill
switch have test files of their own).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from app.contract import APP_PORT, HEALTH_PATH, METRICS_JOB, READY_PATH

pytestmark = pytest.mark.slow  # importing the provider bindings takes seconds

PROJECT, REGION = "nanochat-test", "europe-west4"
LABELS = {"env": "test", "app": "nanochat"}
REPOSITORY, REPOSITORY_LOCATION = "nanochat", REGION
SA_NAME = f"projects/{PROJECT}/serviceAccounts/x@{PROJECT}.iam.gserviceaccount.com"


def synth(build: Callable[[object], object]) -> tuple[str, dict]:
    """`build(stack)` in a fresh Testing stack: the synthesized text (for the Testing API) and its JSON."""
    from cdktf import TerraformStack
    from cdktf import Testing as T  # not `Testing`: pytest would try to collect it

    stack = TerraformStack(T.app(), "example")
    build(stack)
    text = T.synth(stack)
    return text, json.loads(text)


def has(text: str, resource_type: str, properties: dict) -> bool:
    from cdktf import Testing as T

    return T.to_have_resource_with_properties(text, resource_type, properties)


def resources(data: dict, resource_type: str) -> list[dict]:
    return list(data.get("resource", {}).get(resource_type, {}).values())


def github_repository():
    from modules.inputs import GitHubRepository

    return GitHubRepository(owner="octo", repo="nanochat", owner_id=1, repository_id=2, deploy_branch="main")


def test_project_services_enable_each_api_and_wait_after_them():
    from modules.project_services import PROPAGATION_WAIT, ProjectServices

    apis = ["run.googleapis.com", "iam.googleapis.com"]
    _, data = synth(lambda s: ProjectServices(s, "apis", project=PROJECT, services=apis))
    services = resources(data, "google_project_service")
    assert sorted(s["service"] for s in services) == sorted(apis)
    assert all(s["disable_on_destroy"] is False for s in services)
    [wait] = resources(data, "time_sleep")
    assert wait["create_duration"] == PROPAGATION_WAIT
    assert wait["triggers"] == {"services": "iam.googleapis.com,run.googleapis.com"}
    assert len(wait["depends_on"]) == len(apis)


def test_secrets_are_declared_with_labels_and_no_value():
    from modules.secrets import Secrets

    declared = {"nanochat-api-keys": "bearer keys", "smtp": ""}
    text, data = synth(lambda s: Secrets(s, "secrets", project=PROJECT, secrets=declared, labels=LABELS))
    assert has(text, "google_secret_manager_secret", {"secret_id": "nanochat-api-keys", "labels": LABELS})
    assert has(text, "google_secret_manager_secret", {"annotations": {"description": "bearer keys"}})
    assert sorted(s["secret_id"] for s in resources(data, "google_secret_manager_secret")) == sorted(declared)
    assert "google_secret_manager_secret_version" not in data["resource"]


def test_a_service_identity_never_holds_a_primitive_role():
    from modules.service_identity import ServiceIdentity

    def build(stack):
        ServiceIdentity(
            stack, "ok", project=PROJECT, account_id="ok", display_name="ok", project_roles=["roles/a"]
        )

    _, data = synth(build)
    [grant] = resources(data, "google_project_iam_member")
    assert grant["role"] == "roles/a" and grant["member"].startswith(
        "serviceAccount:${google_service_account."
    )
    with pytest.raises(ValueError, match="primitive roles are not allowed: roles/editor"):
        synth(
            lambda s: ServiceIdentity(
                s,
                "bad",
                project=PROJECT,
                account_id="bad",
                display_name="bad",
                project_roles=["roles/editor"],
            )
        )


def test_artifact_registry_keeps_recent_versions_and_deletes_old_ones():
    from modules.artifact_registry import ArtifactRegistry
    from modules.inputs import RegistryInput

    spec = RegistryInput(repository="images", keep_recent_versions=3, delete_older_than_days=2)
    made = {}
    text, _ = synth(
        lambda s: made.setdefault(
            "r", ArtifactRegistry(s, "r", spec, project=PROJECT, location=REGION, labels=LABELS)
        )
    )
    assert made["r"].url == f"{REGION}-docker.pkg.dev/{PROJECT}/images"
    assert has(
        text,
        "google_artifact_registry_repository",
        {
            "repository_id": "images",
            "format": "DOCKER",
            "labels": LABELS,
            "cleanup_policies": [
                {"id": "keep-recent", "action": "KEEP", "most_recent_versions": {"keep_count": 3}},
                {
                    "id": "delete-old",
                    "action": "DELETE",
                    "condition": {"tag_state": "ANY", "older_than": "172800s"},
                },
            ],
        },
    )


@pytest.mark.parametrize("on_push", [False, True])
def test_build_trigger_only_on_push_and_a_private_source_bucket(on_push):
    from modules.build_trigger import BUILD_FILE, BuildTrigger

    github = github_repository().model_copy(update={"build_on_push": on_push})

    def build(stack):
        BuildTrigger(
            stack,
            "build",
            github,
            project=PROJECT,
            location=REGION,
            trigger_name="nanochat-test-main",
            account_id="nanochat-build-test",
            bucket=f"{PROJECT}-nanochat-build",
            repository=REPOSITORY,
            repository_location=REPOSITORY_LOCATION,
            image="r/nanochat",
            gpu_image=None,
            labels=LABELS,
        )

    text, data = synth(build)
    assert has(
        text,
        "google_storage_bucket",
        {
            "name": f"{PROJECT}-nanochat-build",
            "location": REGION.upper(),
            "public_access_prevention": "enforced",
            "uniform_bucket_level_access": True,
            "lifecycle_rule": [{"action": {"type": "Delete"}, "condition": {"age": 7}}],
            "labels": LABELS,
        },
    )
    assert has(text, "google_artifact_registry_repository_iam_member", {"repository": REPOSITORY})
    triggers = resources(data, "google_cloudbuild_trigger")
    assert len(triggers) == int(on_push)
    if on_push:
        assert triggers[0]["filename"] == BUILD_FILE
        assert triggers[0]["github"]["push"] == {"branch": "^main$"}
        assert triggers[0]["substitutions"] == {"_IMAGE": "r/nanochat", "_GPU_IMAGE": ""}


def test_cloud_run_service_runs_the_contract_port_probes_and_metrics_sidecar():
    import yaml

    from modules.cloud_run_service import CloudRunService
    from modules.inputs import CloudRunServiceInput

    spec = CloudRunServiceInput(
        initial_image="hello",
        min_instances=1,
        max_instances=2,
        invokers=["user:a@example.com"],
        env={"NANOCHAT_MAX_BATCH": "8"},
        secret_env={"NANOCHAT_API_KEYS": "keys"},
    )

    def build(stack):
        CloudRunService(
            stack,
            "service",
            spec,
            project=PROJECT,
            region=REGION,
            name="nanochat",
            account_id="nanochat-run-test",
            collector_secret_id="nanochat-collector-config",
            gate_audience="nanochat-test-release-gate",
            secret_refs={"keys": "projects/p/secrets/keys"},
            mount_secret_env=True,
            labels=LABELS,
        )

    text, data = synth(build)
    [service] = resources(data, "google_cloud_run_v2_service")
    assert service["labels"] == LABELS and service["custom_audiences"] == ["nanochat-test-release-gate"]
    assert service["template"]["scaling"] == {"min_instance_count": 1, "max_instance_count": 2}
    app = service["template"]["containers"][0]
    assert app["ports"]["container_port"] == APP_PORT
    assert app["startup_probe"]["http_get"] == {"path": READY_PATH, "port": APP_PORT}
    assert app["liveness_probe"]["http_get"] == {"path": HEALTH_PATH, "port": APP_PORT}
    env = {e["name"]: e for e in app["env"]}
    assert env["NANOCHAT_MAX_BATCH"]["value"] == "8"
    assert env["NANOCHAT_API_KEYS"]["value_source"]["secret_key_ref"]["secret"] == "projects/p/secrets/keys"
    [version] = resources(data, "google_secret_manager_secret_version")
    assert yaml.safe_load(version["secret_data"])["metadata"]["name"] == METRICS_JOB
    readers = {g["secret_id"] for g in resources(data, "google_secret_manager_secret_iam_member")}
    assert "projects/p/secrets/keys" in readers and len(readers) == 2  # and the collector's config
    assert has(text, "google_cloud_run_v2_service_iam_member", {"member": "user:a@example.com"})


def test_cloud_run_service_input_is_validated():
    from pydantic import ValidationError

    from modules.inputs import CloudRunServiceInput

    with pytest.raises(ValidationError, match=r"min_instances \(3\) exceeds max_instances \(1\)"):
        CloudRunServiceInput(initial_image="hello", min_instances=3, max_instances=1)
    with pytest.raises(ValidationError, match="look like secrets"):
        CloudRunServiceInput(initial_image="hello", env={"API_TOKEN": "x"})


def test_github_oidc_pins_the_repository_and_grants_the_deployer_what_a_release_needs():
    from modules.github_oidc import GitHubOidc

    def build(stack):
        GitHubOidc(
            stack,
            "github",
            github_repository(),
            project=PROJECT,
            env="test",
            pool_id="github",
            provider_id="github-actions",
            account_id="nanochat-deploy-test",
            repository=REPOSITORY,
            repository_location=REPOSITORY_LOCATION,
            service_name="nanochat",
            service_location=REGION,
            build_bucket=f"{PROJECT}-nanochat-build",
            runtime_account=SA_NAME,
            build_account=SA_NAME,
            gpu_account=None,
            api_keys_secret=None,
        )

    text, data = synth(build)
    [provider] = resources(data, "google_iam_workload_identity_pool_provider")
    condition = provider["attribute_condition"]
    assert "repo:octo/nanochat:environment:test" in condition  # no environment given: the env's name
    assert (
        "assertion.repository_owner_id == '1'" in condition and "assertion.repository_id == '2'" in condition
    )
    roles = sorted(g["role"] for g in resources(data, "google_cloud_run_v2_service_iam_member"))
    assert roles == ["roles/run.developer", "roles/run.invoker"]
    assert len(resources(data, "google_service_account_iam_member")) == 3  # federation, runtime, builder
    assert "google_project_iam_custom_role" not in data["resource"]  # no GPU group to roll
    assert "google_secret_manager_secret_iam_member" not in data["resource"]
    assert has(text, "google_storage_bucket_iam_member", {"role": "roles/storage.objectAdmin"})


def test_gpu_group_and_network_admit_health_checks_to_the_app_port_only():
    from modules.gpu_inference_group import GpuInferenceGroup
    from modules.inputs import AutoscalingInput, GpuGroupInput
    from modules.network import GpuNetwork

    spec = GpuGroupInput(
        zones=["europe-west4-a"],
        image_family="common-cu128-ubuntu-2204-nvidia-570",
        autoscaling=AutoscalingInput(min_replicas=0, max_replicas=2),
        spot=True,
    )

    def build(stack):
        network = GpuNetwork(stack, "network", project=PROJECT, region=REGION, env="test")
        group = GpuInferenceGroup(
            stack,
            "gpu",
            spec,
            project=PROJECT,
            region=REGION,
            name="nanochat-gpu-test",
            account_id="nanochat-gpu-test",
            subnetwork_id=network.subnetwork_id,
            repository=REPOSITORY,
            repository_location=REPOSITORY_LOCATION,
            secret_refs={},
            released=True,
            labels=LABELS,
        )
        network.allow_health_checks(target_service_account=group.identity.email)

    text, data = synth(build)
    [firewall] = resources(data, "google_compute_firewall")
    assert firewall["allow"] == [{"protocol": "tcp", "ports": [str(APP_PORT)]}]
    assert firewall["target_service_accounts"][0].startswith("${google_service_account.")
    [template] = resources(data, "google_compute_instance_template")
    assert template["scheduling"]["provisioning_model"] == "SPOT" and template["labels"] == LABELS
    assert template["network_interface"][0]["subnetwork"].startswith("${google_compute_subnetwork.")
    checks = {c["name"]: c["http_health_check"] for c in resources(data, "google_compute_health_check")}
    assert checks == {
        "nanochat-gpu-test-health": {"port": APP_PORT, "request_path": HEALTH_PATH},
        "nanochat-gpu-test-ready": {"port": APP_PORT, "request_path": READY_PATH},
    }
    [group] = resources(data, "google_compute_region_instance_group_manager")
    assert "target_size" not in group  # the autoscaler sizes a released group
    assert has(
        text,
        "google_compute_region_autoscaler",
        {
            "autoscaling_policy": {
                "min_replicas": 0,
                "max_replicas": 2,
                "load_balancing_utilization": {"target": 0.8},
            }
        },
    )


@pytest.mark.parametrize("domain", [None, "chat.example.com"])
def test_http_load_balancer_serves_https_on_a_domain_else_plain_http(domain):
    from modules.http_load_balancer import HttpLoadBalancer
    from modules.inputs import LoadBalancerInput

    spec = LoadBalancerInput(domain=domain, rate_limit_per_minute=120, request_timeout_s=60)

    def build(stack):
        HttpLoadBalancer(
            stack,
            "lb",
            spec,
            project=PROJECT,
            name="nanochat-gpu-test",
            instance_group="projects/p/regions/r/instanceGroups/g",
            health_check="projects/p/global/healthChecks/ready",
            labels=LABELS,
        )

    text, data = synth(build)
    [backend] = resources(data, "google_compute_backend_service")
    assert backend["health_checks"] == ["projects/p/global/healthChecks/ready"]
    assert backend["backend"][0]["group"] == "projects/p/regions/r/instanceGroups/g"
    assert backend["timeout_sec"] == 60
    [armor] = resources(data, "google_compute_security_policy")
    assert armor["rule"][0]["rate_limit_options"]["rate_limit_threshold"] == {
        "count": 120,
        "interval_sec": 60,
    }
    ports = sorted(r["port_range"] for r in resources(data, "google_compute_global_forwarding_rule"))
    assert ports == (["443", "80"] if domain else ["80"])
    assert bool(resources(data, "google_compute_managed_ssl_certificate")) == bool(domain)
    assert has(text, "google_compute_global_address", {"labels": LABELS})
