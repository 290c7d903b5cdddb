"""The synthesized dev and prod stacks: every resource the service needs, with the properties that matter.

Assertions use the cdktf Testing API (`to_have_resource_with_properties`) where a partial match says it,
and the parsed `cdk.tf.json` where a whole set has to be compared.
"""

from __future__ import annotations

import json

import pytest
import yaml

from infra.config import ROOT
from modules.gpu_vm_boot import APP_PORT as GPU_PORT

pytestmark = pytest.mark.slow  # the session's synth takes 10-30 s

# the APIs the resources below need (the stack may enable more)
REQUIRED_APIS = ["artifactregistry", "billingbudgets", "cloudbuild", "compute", "iam", "iamcredentials"]
REQUIRED_APIS += ["monitoring", "run", "secretmanager", "storage", "sts"]


def has(synth, resource_type: str, properties: dict) -> bool:
    from cdktf import Testing as T

    return T.to_have_resource_with_properties(synth.text, resource_type, properties)


def app_service(synth) -> dict:
    return synth.one("google_cloud_run_v2_service", name=synth.cfg.service.name)


def containers_by_name(service: dict) -> dict[str, dict]:
    return {c["name"]: c for c in service["template"]["containers"]}


def test_both_envs_synthesize_into_their_own_state(stacks):
    assert set(stacks) == {"dev", "prod"}
    for synth in stacks.values():
        backend = synth.data["terraform"]["backend"]["gcs"]
        assert backend == {"bucket": synth.cfg.state.bucket, "prefix": synth.cfg.state.prefix}
        (provider,) = synth.data["provider"]["google"]
        assert provider["project"] == synth.cfg.project and provider["region"] == synth.cfg.region


def test_the_testing_api_can_fail(dev):
    """Guards the assertions below: a property that is not there is reported as absent."""
    assert not has(dev, "google_artifact_registry_repository", {"format": "MAVEN"})
    assert has(dev, "google_artifact_registry_repository", {"format": "DOCKER"})


def test_required_apis_are_enabled_and_everything_waits_for_them(stacks):
    for synth in stacks.values():
        services = synth.of_type("google_project_service")
        assert {s["service"] for s in services.values()} >= {f"{api}.googleapis.com" for api in REQUIRED_APIS}
        assert all(s["disable_on_destroy"] is False for s in services.values())
        api_addresses = {f"google_project_service.{name}" for name in services}
        for rtype, by_name in synth.data["resource"].items():
            if rtype == "google_project_service":
                continue
            for name, body in by_name.items():
                assert api_addresses <= set(body.get("depends_on", [])), (
                    f"{rtype}.{name} does not wait for APIs"
                )


def test_artifact_registry_with_a_cleanup_policy(stacks):
    for synth in stacks.values():
        reg = synth.cfg.registry
        assert has(
            synth,
            "google_artifact_registry_repository",
            {
                "format": "DOCKER",
                "repository_id": reg.repository,
                "location": synth.cfg.region,
                "cleanup_policy_dry_run": False,
                "cleanup_policies": [
                    {
                        "id": "keep-recent",
                        "action": "KEEP",
                        "most_recent_versions": {"keep_count": reg.keep_recent_versions},
                    },
                    {
                        "id": "delete-old",
                        "action": "DELETE",
                        "condition": {
                            "tag_state": "ANY",
                            "older_than": f"{reg.delete_older_than_days * 86400}s",
                        },
                    },
                ],
            },
        )


def test_cloud_build_trigger_builds_main_with_the_image_path(stacks):
    for synth in stacks.values():
        cfg = synth.cfg
        trigger = synth.one("google_cloudbuild_trigger")
        assert trigger["filename"] == "cloudbuild.yaml"
        assert trigger["github"] == {
            "owner": cfg.github.owner,
            "name": cfg.github.repo,
            "push": {"branch": "^main$"},
        }
        image = f"{cfg.region}-docker.pkg.dev/{cfg.project}/{cfg.registry.repository}/{cfg.service.name}"
        assert trigger["substitutions"] == {"_IMAGE": image}
        assert trigger["service_account"].startswith(
            f"projects/{cfg.project}/serviceAccounts/${{google_service_account."
        )
        # manual builds (scripts/deploy.sh) upload to gcloud's default bucket, made here, not by gcloud
        sources = synth.one("google_storage_bucket", name=f"{cfg.project}_cloudbuild")
        assert sources["public_access_prevention"] == "enforced" and sources["uniform_bucket_level_access"]
        assert synth.data["output"]["build_service_account"]["value"] == trigger["service_account"]


def test_cloud_run_app_probes_and_resources(stacks):
    for synth in stacks.values():
        cfg = synth.cfg.service
        service = app_service(synth)
        app = containers_by_name(service)["app"]
        assert app["startup_probe"]["http_get"]["path"] == "/ready"
        assert app["liveness_probe"]["http_get"]["path"] == "/health"
        assert app["resources"] == {
            "limits": {"cpu": cfg.cpu, "memory": cfg.memory},
            "cpu_idle": False,
            "startup_cpu_boost": True,
        }
        assert app["ports"]["container_port"] == 8080
        template = service["template"]
        assert template["scaling"] == {
            "min_instance_count": cfg.min_instances,
            "max_instance_count": cfg.max_instances,
        }
        assert template["max_instance_request_concurrency"] == cfg.concurrency
        assert template["timeout"] == f"{cfg.request_timeout_s}s"
        assert "${google_service_account.service_runtime" in template["service_account"]
        assert service["ingress"] == "INGRESS_TRAFFIC_ALL"
        assert service["deletion_protection"] is cfg.deletion_protection
        plain = {e["name"]: e["value"] for e in app["env"] if "value" in e}
        assert plain == {"HOST": "0.0.0.0", **cfg.env}
        secret = {e["name"]: e["value_source"]["secret_key_ref"] for e in app["env"] if "value_source" in e}
        assert secret == {k: {"secret": v, "version": "latest"} for k, v in cfg.secret_env.items()}


def test_cloud_run_managed_prometheus_sidecar(stacks):
    for synth in stacks.values():
        service = app_service(synth)
        collector = containers_by_name(service)["collector"]
        assert collector["image"].startswith(
            "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:"
        )
        assert collector["image"].rsplit(":", 1)[1][0].isdigit()  # a pinned version
        assert collector["depends_on"] == ["app"]
        assert collector["resources"]["cpu_idle"] is False
        assert collector["volume_mounts"] == [{"name": "collector-config", "mount_path": "/etc/rungmp"}]
        (volume,) = service["template"]["volumes"]
        assert volume["secret"]["items"] == [{"version": "latest", "path": "config.yaml"}]
        # the sidecar's config, scraping the app as job nanochat (the job alerts/ select on)
        version = synth.one("google_secret_manager_secret_version")
        config = yaml.safe_load(version["secret_data"])
        assert config["kind"] == "RunMonitoring" and config["metadata"]["name"] == "nanochat"
        assert config["spec"]["endpoints"] == [{"port": 8080, "path": "/metrics", "interval": "30s"}]


def test_releases_own_the_image_and_traffic(stacks):
    for synth in stacks.values():
        service = app_service(synth)
        ignored = service["lifecycle"]["ignore_changes"]
        assert {"template[0].containers[0].image", "traffic", "client", "client_version"} <= set(ignored)
        assert containers_by_name(service)["app"]["image"] == synth.cfg.service.initial_image


def test_gpu_instance_template(stacks):
    for synth in stacks.values():
        gpu = synth.cfg.gpu
        template = synth.one("google_compute_instance_template")
        assert template["machine_type"] == gpu.machine_type and template["machine_type"].startswith("g2-")
        assert template["guest_accelerator"] == [{"type": "nvidia-l4", "count": gpu.accelerator_count}]
        (disk,) = template["disk"]
        assert disk["boot"] and disk["source_image"] == (
            f"projects/deeplearning-platform-release/global/images/family/{gpu.image_family}"
        )
        assert template["scheduling"]["on_host_maintenance"] == "TERMINATE"
        assert template["scheduling"]["provisioning_model"] == ("SPOT" if gpu.spot else "STANDARD")
        assert template["shielded_instance_config"]["enable_vtpm"] is True
        assert template["shielded_instance_config"]["enable_integrity_monitoring"] is True
        assert template["metadata"]["install-nvidia-driver"] == "True"
        assert template["metadata"]["block-project-ssh-keys"] == "true"
        assert template["metadata"]["nanochat-image"].endswith(f"/{gpu.image_name}:{gpu.image_tag}")
        assert all("access_config" not in nic for nic in template["network_interface"])
        assert template["lifecycle"] == {"create_before_destroy": True}
        assert "${google_service_account.gpu_vm" in template["service_account"]["email"]


def test_gpu_group_autoheals_and_rolls_with_a_surge(stacks):
    for synth in stacks.values():
        gpu = synth.cfg.gpu
        check = synth.one("google_compute_health_check")
        assert check["http_health_check"] == {"port": GPU_PORT, "request_path": "/health"}
        group = synth.one("google_compute_region_instance_group_manager")
        assert group["distribution_policy_zones"] == gpu.zones
        assert group["auto_healing_policies"]["health_check"].startswith("${google_compute_health_check.")
        assert group["update_policy"] == {
            "type": "PROACTIVE",
            "minimal_action": "REPLACE",
            "replacement_method": "SUBSTITUTE",
            "max_surge_fixed": gpu.max_surge,
            "max_unavailable_fixed": 0,
        }
        assert group["named_port"] == [{"name": "http", "port": GPU_PORT}]
        firewall = synth.one("google_compute_firewall")
        assert sorted(firewall["source_ranges"]) == ["130.211.0.0/22", "35.191.0.0/16"]
        assert firewall["allow"] == [{"protocol": "tcp", "ports": [str(GPU_PORT)]}]
        assert len(firewall["target_service_accounts"]) == 1


def test_dev_gpu_group_is_empty_and_prod_autoscales_behind_a_load_balancer(dev, prod):
    dev_group = dev.one("google_compute_region_instance_group_manager")
    assert dev_group["target_size"] == 0
    assert not dev.of_type("google_compute_region_autoscaler")
    assert not dev.of_type("google_compute_global_forwarding_rule")  # idle dev: no forwarding-rule charge

    prod_group = prod.one("google_compute_region_instance_group_manager")
    assert "target_size" not in prod_group  # the autoscaler owns the size
    scaling = prod.cfg.gpu.autoscaling
    assert has(
        prod,
        "google_compute_region_autoscaler",
        {
            "autoscaling_policy": {
                "mode": "ON",
                "min_replicas": scaling.min_replicas,
                "max_replicas": scaling.max_replicas,
                "load_balancing_utilization": {"target": scaling.target_utilization},
            }
        },
    )
    backend = prod.one("google_compute_backend_service")
    assert backend["health_checks"][0].startswith("${google_compute_health_check.")
    assert backend["backend"][0]["group"].endswith(".instance_group}")
    assert backend["backend"][0]["max_rate_per_instance"] == prod.cfg.gpu.max_rate_per_instance
    assert has(
        prod,
        "google_compute_global_forwarding_rule",
        {"port_range": "80", "load_balancing_scheme": "EXTERNAL_MANAGED"},
    )


def _rules_in_repo() -> dict[str, dict]:
    """The alerting rules of alerts/*.rules.yaml, read here with plain YAML (not through the module)."""
    rules = {}
    for path in sorted((ROOT / "alerts").glob("*.rules.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = {**rule, "group": group["name"]}
    return rules


def test_alert_policies_equal_the_alert_rules_in_number_and_promql(stacks):
    rules = _rules_in_repo()
    assert rules, "alerts/*.rules.yaml holds no alerting rules"
    for synth in stacks.values():
        policies = {}
        for body in synth.of_type("google_monitoring_alert_policy").values():
            for condition in body["conditions"]:
                if "condition_prometheus_query_language" in condition:
                    policies[condition["condition_prometheus_query_language"]["alert_rule"]] = body
        assert sorted(policies) == sorted(rules)
        for name, rule in rules.items():
            body = policies[name]
            (condition,) = body["conditions"]
            promql = condition["condition_prometheus_query_language"]
            assert promql["query"] == rule["expr"].strip()
            assert promql["rule_group"] == rule["group"]
            assert promql["labels"]["severity"] == rule["labels"]["severity"]
            assert body["severity"] == rule["labels"]["severity"].upper()
            assert body["display_name"] == name
            assert rule["annotations"]["runbook_url"] in body["documentation"]["content"]
            assert body["notification_channels"]
        durations = {
            n: b["conditions"][0]["condition_prometheus_query_language"]["duration"]
            for n, b in policies.items()
        }
        assert durations["NanochatHighErrorRate"] == "300s" == f"{5 * 60}s"  # `for: 5m`


def test_email_channels_and_uptime_check(dev, prod):
    for synth in (dev, prod):
        channels = synth.of_type("google_monitoring_notification_channel").values()
        assert sorted(c["labels"]["email_address"] for c in channels) == sorted(
            synth.cfg.monitoring.alert_emails
        )
        assert all(c["type"] == "email" for c in channels)
    assert not dev.of_type("google_monitoring_uptime_check_config")
    check = prod.one("google_monitoring_uptime_check_config")
    assert check["http_check"]["path"] == "/health" and check["http_check"]["use_ssl"] is True
    assert check["period"] == f"{prod.cfg.monitoring.uptime_check_period_s}s"
    assert check["monitored_resource"]["type"] == "uptime_url"
    assert "google_cloud_run_v2_service.service_" in check["monitored_resource"]["labels"]["host"]
    uptime_alerts = [
        p
        for p in prod.of_type("google_monitoring_alert_policy").values()
        if "condition_threshold" in p["conditions"][0]
    ]
    assert (
        len(uptime_alerts) == 1
        and "uptime_check/check_passed" in uptime_alerts[0]["conditions"][0]["condition_threshold"]["filter"]
    )


def test_grafana_serves_the_repository_dashboards_privately(stacks):
    dashboards = {p.name: p.read_text() for p in sorted((ROOT / "dashboards").glob("*.json"))}
    assert dashboards
    for synth in stacks.values():
        objects = {o["name"]: o for o in synth.of_type("google_storage_bucket_object").values()}
        for name, text in dashboards.items():
            assert objects[f"dashboards/{name}"]["content"] == text
        datasources = yaml.safe_load(objects["provisioning/datasources/managed-prometheus.yaml"]["content"])
        (source,) = datasources["datasources"]
        assert (
            source["type"] == "prometheus"
            and source["url"] == "http://localhost:9090"
            and source["isDefault"]
        )
        providers = yaml.safe_load(objects["provisioning/dashboards/nanochat.yaml"]["content"])["providers"]
        assert providers[0]["options"]["path"] == "/mnt/grafana/dashboards"

        grafana = synth.one("google_cloud_run_v2_service", name="grafana")
        containers = containers_by_name(grafana)
        frontend = containers["prometheus-frontend"]
        assert frontend["image"].startswith("gke.gcr.io/prometheus-engine/frontend:v")
        assert f"--query.project-id={synth.cfg.project}" in frontend["args"]
        assert containers["grafana"]["image"].rsplit(":", 1)[1][0].isdigit()  # pinned
        env = {e["name"]: e["value"] for e in containers["grafana"]["env"]}
        assert env["GF_PATHS_PROVISIONING"] == "/mnt/grafana/provisioning"
        assert env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
        (volume,) = grafana["template"]["volumes"]
        assert volume["gcs"]["read_only"] is True
        bucket = synth.one("google_storage_bucket", name=f"{synth.cfg.project}-nanochat-grafana")
        assert bucket["public_access_prevention"] == "enforced" and bucket["uniform_bucket_level_access"]

        invokers = [
            m
            for m in synth.of_type("google_cloud_run_v2_service_iam_member").values()
            if "grafana_service" in m["name"]
        ]
        assert sorted(m["member"] for m in invokers) == sorted(synth.cfg.grafana.viewers)
        assert {m["role"] for m in invokers} == {"roles/run.invoker"}


def test_budget_thresholds_and_channels(stacks):
    for synth in stacks.values():
        budget = synth.one("google_billing_budget")
        rules = [(r["threshold_percent"], r["spend_basis"]) for r in budget["threshold_rules"]]
        assert rules == [
            (0.5, "CURRENT_SPEND"),
            (0.9, "CURRENT_SPEND"),
            (1.0, "CURRENT_SPEND"),
            (1.0, "FORECASTED_SPEND"),
        ]
        assert budget["amount"]["specified_amount"] == {
            "currency_code": "USD",
            "units": str(synth.cfg.budget.amount),
        }
        assert budget["billing_account"] == synth.cfg.budget.billing_account
        channels = budget["all_updates_rule"]["monitoring_notification_channels"]
        assert len(channels) == len(synth.cfg.monitoring.alert_emails)
        assert all(c.startswith("${google_monitoring_notification_channel.") for c in channels)
        assert budget["budget_filter"]["projects"] == [
            "projects/${data.google_project.project-number.number}"
        ]


def test_github_oidc_is_restricted_to_the_repository_environment_and_branch(stacks):
    for synth in stacks.values():
        gh = synth.cfg.github
        provider = synth.one("google_iam_workload_identity_pool_provider")
        assert provider["oidc"] == {"issuer_uri": "https://token.actions.githubusercontent.com"}
        # the deploy job of .github/workflows/deploy.yml runs in the GitHub environment named like the env
        assert provider["attribute_condition"] == (
            f"assertion.sub == 'repo:{gh.owner}/{gh.repo}:environment:{synth.cfg.name}' "
            f"&& assertion.ref == 'refs/heads/{gh.deploy_branch}'"
        )
        assert provider["attribute_mapping"]["attribute.repository"] == "assertion.repository"
        federation = synth.one("google_service_account_iam_member", role="roles/iam.workloadIdentityUser")
        assert federation["member"].endswith(f"/attribute.repository/{gh.owner}/{gh.repo}")
        assert federation["member"].startswith(
            "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool."
        )


def test_the_deployer_holds_only_what_a_release_needs(stacks):
    for synth in stacks.values():
        grants = []
        for rtype, by_name in synth.data["resource"].items():
            for body in by_name.values():
                if "github_deployer_account" in str(body.get("member", "")):
                    # the service account acted as, by construct path (its logical name without the hash)
                    target = body.get("service_account_id", ".").split(".")[1].rsplit("_", 1)[0]
                    grants.append((rtype, body["role"], target))
        assert sorted(grants) == sorted(
            [
                ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.writer", ""),
                ("google_cloud_run_v2_service_iam_member", "roles/run.developer", ""),
                ("google_cloud_run_v2_service_iam_member", "roles/run.invoker", ""),
                (
                    "google_service_account_iam_member",
                    "roles/iam.serviceAccountUser",
                    "build_builder_account",
                ),
                (
                    "google_service_account_iam_member",
                    "roles/iam.serviceAccountUser",
                    "service_runtime_account",
                ),
                ("google_storage_bucket_iam_member", "roles/storage.objectAdmin", ""),
                ("google_storage_bucket_iam_member", "roles/storage.legacyBucketReader", ""),
                # Cloud Build has no per-build IAM
                ("google_project_iam_member", "roles/cloudbuild.builds.editor", ""),
                ("google_project_iam_member", "roles/logging.viewer", ""),
            ]
        )


def test_no_primitive_roles_and_no_public_access_unless_configured(dev, prod):
    for synth in (dev, prod):
        roles = [b.get("role") for by_name in synth.data["resource"].values() for b in by_name.values()]
        assert not {"roles/owner", "roles/editor", "roles/viewer"} & set(roles)
        assert not [t for t in synth.data["resource"] if t.endswith(("_iam_binding", "_iam_policy"))]
    public = lambda s: [  # noqa: E731
        m for m in s.of_type("google_cloud_run_v2_service_iam_member").values() if m["member"] == "allUsers"
    ]
    assert dev.cfg.service.public is False and public(dev) == []
    assert prod.cfg.service.public is True
    (member,) = public(prod)
    assert member["role"] == "roles/run.invoker" and member["name"].startswith(
        "${google_cloud_run_v2_service.service_"
    )


def test_labelled_resources_carry_env_app_and_managed_by(stacks):
    for synth in stacks.values():
        expected = {"env": synth.cfg.name, "app": "nanochat", "managed-by": "cdktf"}
        for rtype in (
            "google_artifact_registry_repository",
            "google_cloud_run_v2_service",
            "google_compute_instance_template",
            "google_storage_bucket",
            "google_secret_manager_secret",
        ):
            for body in synth.of_type(rtype).values():
                assert expected.items() <= body["labels"].items(), rtype
        for rtype in ("google_monitoring_alert_policy", "google_monitoring_notification_channel"):
            for body in synth.of_type(rtype).values():
                assert expected.items() <= body["user_labels"].items(), rtype


def test_outputs_for_the_delivery_scripts(stacks):
    for synth in stacks.values():
        outputs = synth.data["output"]
        assert {
            "service_name",
            "service_url",
            "region",
            "registry_url",
            "image",
            "workload_identity_provider",
            "deployer_service_account",
            "runtime_service_account",
            "build_service_account",
            "grafana_url",
        } <= set(outputs)
        assert outputs["region"]["value"] == synth.cfg.region
        assert outputs["workload_identity_provider"]["value"].endswith(".name}")
        assert json.dumps(outputs).count("google_iam_workload_identity_pool_provider.") == 1


def test_a_private_service_is_checked_with_an_oidc_token(dev):
    """dev has no uptime check; turned on, it must authenticate, and the Monitoring agent may invoke."""
    from cdktf import Testing as T

    from infra.stack import NanochatStack

    cfg = dev.cfg.model_copy(
        update={"monitoring": dev.cfg.monitoring.model_copy(update={"uptime_check_period_s": 300})}
    )
    assert cfg.service.public is False
    stack = json.loads(T.synth(NanochatStack(T.app(), cfg)))
    (check,) = stack["resource"]["google_monitoring_uptime_check_config"].values()
    assert check["http_check"]["service_agent_authentication"] == {"type": "OIDC_TOKEN"}
    invokers = [m["member"] for m in stack["resource"]["google_cloud_run_v2_service_iam_member"].values()]
    agent = (
        "serviceAccount:service-${data.google_project.project-number.number}@gcp-sa-monitoring-notification"
    )
    assert [m for m in invokers if m.startswith(agent)], invokers
