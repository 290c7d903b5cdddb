"""The synthesized dev and prod stacks: every resource the service needs, with the properties that matter.

Assertions use the cdktf Testing API (`to_have_resource_with_properties`) where a partial match says it,
and the parsed `cdk.tf.json` where a whole set has to be compared.
"""

from __future__ import annotations

import json

import pytest
import yaml

from app.contract import APP_PORT, HEALTH_PATH, METRICS_PATH, METRICS_PORT, READY_PATH
from infra import names
from infra.config import ROOT

pytestmark = pytest.mark.slow  # the session's synth takes 10-30 s

# the APIs the resources below need (the stack may enable more)
REQUIRED_APIS = ["artifactregistry", "billingbudgets", "cloudbuild", "compute", "iam", "iamcredentials"]
REQUIRED_APIS += ["monitoring", "run", "secretmanager", "storage", "sts", "pubsub", "cloudfunctions"]
REQUIRED_APIS += ["eventarc"]


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
    """(tests/infra/test_apply_order.py walks the whole graph.)"""
    for synth in stacks.values():
        services = synth.of_type("google_project_service")
        assert {s["service"] for s in services.values()} >= {f"{api}.googleapis.com" for api in REQUIRED_APIS}
        assert all(s["disable_on_destroy"] is False for s in services.values())
        (wait_name,) = synth.of_type("time_sleep")
        for rtype, by_name in synth.data["resource"].items():
            if rtype in ("google_project_service", "time_sleep"):
                continue
            for name, body in by_name.items():
                assert f"time_sleep.{wait_name}" in body.get("depends_on", []), f"{rtype}.{name}"


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


def test_builds_stage_in_the_stacks_bucket_and_run_as_the_build_account(stacks):
    for synth in stacks.values():
        cfg = synth.cfg
        assert not cfg.github.build_on_push and not synth.of_type("google_cloudbuild_trigger")
        # gcloud's default PROJECT_cloudbuild would need project-wide bucket rights; none is made
        assert not [b for b in synth.of_type("google_storage_bucket").values() if "_cloudbuild" in b["name"]]
        sources = synth.one("google_storage_bucket", name=names.build_source_bucket(cfg))
        assert sources["name"] == f"{cfg.project}-nanochat-build"
        assert sources["public_access_prevention"] == "enforced" and sources["uniform_bucket_level_access"]
        assert synth.data["output"]["build_source_bucket"]["value"].startswith("${google_storage_bucket.")
        # the build account: logs, the staged sources, pushes to the one repository; nothing else
        grants = [
            (rtype, body["role"])
            for rtype, by_name in synth.data["resource"].items()
            for body in by_name.values()
            if "build_builder_account" in str(body.get("member", ""))
        ]
        # (and, with the kill switch, the function's source, which it builds too)
        reads = 2 if cfg.budget.kill_switch else 1
        assert sorted(grants) == [
            ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.writer"),
            ("google_project_iam_member", "roles/logging.logWriter"),
            *[("google_storage_bucket_iam_member", "roles/storage.objectViewer")] * reads,
        ]


def test_the_optional_trigger_builds_both_images_as_the_build_account(variants):
    synth = variants["devrel"]
    cfg = synth.cfg
    trigger = synth.one("google_cloudbuild_trigger")
    assert trigger["filename"] == "cloudbuild.yaml"
    assert trigger["github"] == {
        "owner": cfg.github.owner,
        "name": cfg.github.repo,
        "push": {"branch": "^main$"},
    }
    assert trigger["substitutions"] == {
        "_IMAGE": names.image_repo(cfg),
        "_GPU_IMAGE": names.gpu_image_repo(cfg),
    }
    assert trigger["service_account"].startswith(
        f"projects/{cfg.project}/serviceAccounts/${{google_service_account.build_builder_account"
    )


def test_cloud_run_app_probes_and_resources(stacks, variants):
    for synth in [*stacks.values(), variants["prodmon"]]:
        cfg = synth.cfg.service
        service = app_service(synth)
        app = containers_by_name(service)["app"]
        assert app["startup_probe"]["http_get"] == {"path": READY_PATH, "port": APP_PORT}
        assert app["liveness_probe"]["http_get"] == {"path": HEALTH_PATH, "port": APP_PORT}
        assert app["resources"] == {
            "limits": {"cpu": cfg.cpu, "memory": cfg.memory},
            "cpu_idle": False,
            "startup_cpu_boost": True,
        }
        assert app["ports"]["container_port"] == APP_PORT == 8000  # Cloud Run sets PORT to it
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
        assert plain == {"HOST": "0.0.0.0", "NANOCHAT_METRICS_PORT": str(METRICS_PORT), **cfg.env}
        secret = {e["name"]: e["value_source"]["secret_key_ref"] for e in app["env"] if "value_source" in e}
        # mounted once the secrets have values (bootstrap adds them after the foundation apply)
        assert set(secret) == (set(cfg.secret_env) if synth.cfg.released else set())
        for name, ref in secret.items():  # the declared secret, so the mount waits for its creation
            assert ref["version"] == "latest"
            assert ref["secret"].startswith(
                f"${{google_secret_manager_secret.secrets_{cfg.secret_env[name]}_"
            )


def test_secrets_are_declared_mounted_and_read_only_by_who_uses_them(dev, prod):
    """Finding 4: the api keys live in a secret the stack declares; the service mounts it, the deployer
    (the release gate) may read it, and nobody else."""
    for synth in (dev, prod):
        declared = {b["secret_id"]: b for b in synth.of_type("google_secret_manager_secret").values()}
        assert set(synth.cfg.secrets) <= set(declared)
        assert not [
            v
            for v in synth.of_type("google_secret_manager_secret_version").values()
            if "secrets_" in v["secret"]
        ]  # values come from bootstrap.sh, never from the stack
    keys = prod.cfg.service.api_keys_secret
    assert keys == "nanochat-api-keys" == prod.cfg.service.secret_env["NANOCHAT_API_KEYS"]
    readers = sorted(
        m["member"].split(".")[1].rsplit("_", 1)[0]
        for m in prod.of_type("google_secret_manager_secret_iam_member").values()
        if f"secrets_{keys}_" in m["secret_id"]
    )
    assert readers == ["github_deployer_account", "gpu_vm_account", "service_runtime_account"]
    assert not [
        m
        for m in dev.of_type("google_secret_manager_secret_iam_member").values()
        if "github_deployer_account" in m["member"]
    ]


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
        assert config["spec"]["endpoints"] == [
            {"port": METRICS_PORT, "path": METRICS_PATH, "interval": "30s"}
        ]


def test_releases_own_the_image_and_traffic(stacks):
    for synth in stacks.values():
        service = app_service(synth)
        ignored = service["lifecycle"]["ignore_changes"]
        assert {"template[0].containers[0].image", "traffic", "client", "client_version"} <= set(ignored)
        assert containers_by_name(service)["app"]["image"] == synth.cfg.service.initial_image
        assert "traffic" not in service  # releases (and scripts/deploy.sh --promote-latest) own it
        # the gate's ID token names a custom audience, accepted on every URL of the service
        assert service["custom_audiences"] == [names.gate_audience(synth.cfg)]
        assert synth.data["output"]["gate_audience"]["value"] == f"nanochat-{synth.cfg.name}-release-gate"


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
        # finding 7: a current family (Ubuntu 22.04, driver 570 for the image's CUDA 12.8), not Debian 11
        assert gpu.image_family == "common-cu128-ubuntu-2204-nvidia-570"
        assert "install-nvidia-driver" not in template["metadata"]  # the family ships the driver
        assert template["metadata"]["block-project-ssh-keys"] == "true"
        # finding 6: releases own the image (a digest in the all-instances config), never the template
        assert "nanochat-image" not in template["metadata"]
        assert ":latest" not in json.dumps(template)
        assert all("access_config" not in nic for nic in template["network_interface"])
        assert template["lifecycle"] == {"create_before_destroy": True}
        assert "${google_service_account.gpu_vm" in template["service_account"]["email"]


def test_gpu_group_autoheals_and_rolls_with_a_surge(stacks):
    for synth in stacks.values():
        gpu = synth.cfg.gpu
        checks = {c["name"]: c for c in synth.of_type("google_compute_health_check").values()}
        group_name = names.gpu_group(synth.cfg)
        assert checks[f"{group_name}-health"]["http_health_check"] == {
            "port": APP_PORT,
            "request_path": HEALTH_PATH,
        }
        assert checks[f"{group_name}-ready"]["http_health_check"] == {
            "port": APP_PORT,
            "request_path": READY_PATH,
        }
        group = synth.one("google_compute_region_instance_group_manager")
        assert group["name"] == group_name
        assert group["distribution_policy_zones"] == gpu.zones
        assert group["auto_healing_policies"]["health_check"].startswith(
            "${google_compute_health_check.gpu_health_"
        )
        # finding 6: releases set the image through the all-instances config; Terraform leaves it alone
        assert group["lifecycle"]["ignore_changes"] == ["all_instances_config"]
        # finding 12: creation failures (no GPU capacity, quota) fail the apply
        assert group["wait_for_instances"] is True and group["wait_for_instances_status"] == "STABLE"
        assert group["timeouts"]["create"] == group["timeouts"]["update"] == "45m"
        assert group["update_policy"] == {
            "type": "PROACTIVE",
            "minimal_action": "REPLACE",
            "replacement_method": "SUBSTITUTE",
            "max_surge_fixed": gpu.max_surge,
            "max_unavailable_fixed": 0,
        }
        assert group["named_port"] == [{"name": "http", "port": APP_PORT}]
        firewall = synth.one("google_compute_firewall")
        assert sorted(firewall["source_ranges"]) == ["130.211.0.0/22", "35.191.0.0/16"]
        assert firewall["allow"] == [{"protocol": "tcp", "ports": [str(APP_PORT)]}]
        assert len(firewall["target_service_accounts"]) == 1


def test_before_a_release_the_gpu_group_is_held_at_zero_without_an_autoscaler(dev, prod):
    for synth in (dev, prod):
        assert not synth.cfg.released
        assert synth.one("google_compute_region_instance_group_manager")["target_size"] == 0
        assert not synth.of_type("google_compute_region_autoscaler")
    assert not dev.of_type("google_compute_global_forwarding_rule")  # idle dev: no forwarding-rule charge


def test_released_prod_autoscales_behind_an_https_load_balancer_with_cloud_armor(variants):
    prod = variants["prodmon"]
    prod_group = prod.one("google_compute_region_instance_group_manager")
    assert "target_size" not in prod_group  # the autoscaler owns the size
    scaling = prod.cfg.gpu.autoscaling
    policy = prod.one("google_compute_region_autoscaler")["autoscaling_policy"]
    assert policy["mode"] == "ON"
    assert (policy["min_replicas"], policy["max_replicas"]) == (scaling.min_replicas, scaling.max_replicas)
    assert policy["load_balancing_utilization"] == {"target": scaling.target_utilization}
    backend = prod.one("google_compute_backend_service")
    # finding 8: traffic only to VMs whose model is loaded (the autohealing check is /health)
    (check,) = backend["health_checks"]
    assert check.startswith("${google_compute_health_check.gpu_ready_")
    assert backend["backend"][0]["group"].endswith(".instance_group}")
    assert backend["backend"][0]["max_rate_per_instance"] == prod.cfg.gpu.max_rate_per_instance
    # finding 9: Cloud Armor throttles each client IP; HTTPS with a managed certificate; 80 redirects
    assert backend["security_policy"].startswith("${google_compute_security_policy.gpu-lb_armor_")
    armor = prod.one("google_compute_security_policy")
    (limit,) = [r for r in armor["rule"] if r["action"] in ("throttle", "rate_based_ban")]
    assert limit["rate_limit_options"]["enforce_on_key"] == "IP"
    assert limit["rate_limit_options"]["rate_limit_threshold"] == {
        "count": prod.cfg.gpu.rate_limit_per_minute,
        "interval_sec": 60,
    }
    cert = prod.one("google_compute_managed_ssl_certificate")
    assert cert["managed"] == {"domains": [prod.cfg.gpu.domain]}
    rules = {r["port_range"]: r for r in prod.of_type("google_compute_global_forwarding_rule").values()}
    assert set(rules) == {"443", "80"}
    assert rules["443"]["target"].startswith("${google_compute_target_https_proxy.")
    redirect = prod.one("google_compute_url_map", name=f"{names.gpu_group(prod.cfg)}-redirect")
    assert redirect["default_url_redirect"]["https_redirect"] is True
    assert prod.data["output"]["gpu_url"]["value"] == f"https://{prod.cfg.gpu.domain}"


def test_released_dev_runs_working_hours_on_a_schedule_and_plain_http_only_when_asked(variants):
    dev = variants["devrel"]
    assert dev.cfg.gpu.insecure_http and not dev.cfg.gpu.domain
    group = dev.one("google_compute_region_instance_group_manager")
    assert "target_size" not in group  # the autoscaler owns the size
    policy = dev.one("google_compute_region_autoscaler")["autoscaling_policy"]
    schedule = dev.cfg.gpu.schedule
    assert policy["min_replicas"] == 0 and policy["max_replicas"] == schedule.size
    # schedules need another signal; without load-balancer autoscaling it is CPU
    assert "cpu_utilization" in policy
    assert policy["scaling_schedules"] == [
        {
            "name": "working-hours",
            "description": "the GPU group's working hours (envs/*.yaml gpu.schedule)",
            "schedule": "0 8 * * 1-5",
            "duration_sec": 11 * 3600,
            "time_zone": "Europe/Berlin",
            "min_required_replicas": schedule.size,
        }
    ]
    (rule,) = dev.of_type("google_compute_global_forwarding_rule").values()
    assert rule["port_range"] == "80" and rule["target"].startswith("${google_compute_target_http_proxy.")
    assert dev.one("google_compute_backend_service")["security_policy"]


def _rules_in_repo() -> dict[str, dict]:
    """The alerting rules of alerts/*.rules.yaml, read here with plain YAML (not through the module)."""
    rules = {}
    for path in sorted((ROOT / "alerts").glob("*.rules.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = {**rule, "group": group["name"]}
    return rules


def monitored(variants) -> list:
    return [variants["devmon"], variants["prodmon"]]


def test_alert_policies_equal_the_alert_rules_in_number_and_promql(variants):
    rules = _rules_in_repo()
    assert rules, "alerts/*.rules.yaml holds no alerting rules"
    for synth in monitored(variants):
        policies = {}
        for body in synth.of_type("google_monitoring_alert_policy").values():
            for condition in body["conditions"]:
                if "condition_prometheus_query_language" in condition:
                    policies[condition["condition_prometheus_query_language"]["alert_rule"]] = body
        expected = set(rules)
        if not synth.cfg.service.min_instances:  # a service that scales to zero does not page on absent
            expected -= {"NanochatTargetAbsent"}  # series (modules/monitoring.py)
        if "OTEL_EXPORTER_OTLP_ENDPOINT" not in synth.cfg.service.env:  # no traces: the metric of the
            expected -= {"NanochatTraceExportFailing"}  # trace-export alert is never written
        assert sorted(policies) == sorted(expected), synth.cfg.name
        for name, rule in rules.items():
            if name not in policies:
                continue
            body = policies[name]
            (condition,) = body["conditions"]
            promql = condition["condition_prometheus_query_language"]
            assert promql["query"] == rule["expr"].strip()
            assert promql["rule_group"] == rule["group"]
            assert promql["labels"]["severity"] == rule["labels"]["severity"]
            assert body["severity"] == rule["labels"]["severity"].upper()
            assert body["display_name"] == name
            assert rule["annotations"]["runbook_url"] in body["documentation"]["content"]
            grafana_emails = synth.cfg.grafana.smtp is not None and rule["labels"]["severity"] != "critical"
            assert bool(body["notification_channels"]) is not grafana_emails
            assert (body["user_labels"].get("notified-by") == "grafana") is grafana_emails
        durations = {
            n: b["conditions"][0]["condition_prometheus_query_language"]["duration"]
            for n, b in policies.items()
        }
        assert durations["NanochatHighErrorRate"] == "300s" == f"{5 * 60}s"  # `for: 5m`


def test_email_channels_and_uptime_check(dev, prod, variants):
    assert not prod.of_type("google_monitoring_uptime_check_config")  # foundation: no checks yet
    prod = variants["prodmon"]
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


def test_grafana_serves_the_repository_dashboards_privately(stacks, variants):
    dashboards = {p.name: p.read_text() for p in sorted((ROOT / "dashboards").glob("*.json"))}
    assert dashboards
    for synth in stacks.values():  # before `monitored`: no Grafana
        assert not [
            s for s in synth.of_type("google_cloud_run_v2_service").values() if s["name"] == "grafana"
        ]
    for synth in monitored(variants):
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
        env = {e["name"]: e["value"] for e in containers["grafana"]["env"] if "value" in e}
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
        # finding 11: the numeric owner and repository ids are pinned (a re-registered name cannot pass)
        assert provider["attribute_condition"] == (
            f"assertion.sub == 'repo:{gh.owner}/{gh.repo}:environment:{synth.cfg.name}' "
            f"&& assertion.ref == 'refs/heads/{gh.deploy_branch}' "
            f"&& assertion.repository_owner_id == '{gh.owner_id}' "
            f"&& assertion.repository_id == '{gh.repository_id}'"
        )
        mapping = provider["attribute_mapping"]
        assert mapping["attribute.repository"] == "assertion.repository"
        assert mapping["attribute.repository_owner_id"] == "assertion.repository_owner_id"
        assert mapping["attribute.repository_id"] == "assertion.repository_id"
        federation = synth.one("google_service_account_iam_member", role="roles/iam.workloadIdentityUser")
        assert federation["member"].endswith(f"/attribute.repository_id/{gh.repository_id}")
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
                    role = "custom" if "google_project_iam_custom_role" in body["role"] else body["role"]
                    grants.append((rtype, role, target))
        keys_reader = [("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor", "")]
        assert sorted(grants) == sorted(
            (keys_reader if synth.cfg.service.api_keys_secret else [])
            + [
                # rolling the GPU group to a released digest: a custom role (get, update), acting as its VMs
                ("google_project_iam_member", "custom", ""),
                ("google_service_account_iam_member", "roles/iam.serviceAccountUser", "gpu_vm_account"),
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
        assert {
            "project",
            "gpu_image",
            "gpu_group",
            "build_source_bucket",
            "gate_audience",
            "gpu_address",
            "kill_switch_topic",
        } <= set(outputs)
        assert outputs["region"]["value"] == synth.cfg.region
        assert outputs["gpu_group"]["value"] == names.gpu_group(synth.cfg)
        assert outputs["build_service_account"]["value"].startswith("${google_service_account.build_builder_")
        assert outputs["workload_identity_provider"]["value"].endswith(".name}")
        assert json.dumps(outputs).count("google_iam_workload_identity_pool_provider.") == 1


def test_a_private_service_is_checked_with_an_oidc_token(variants):
    """An uptime check on dev's private service must authenticate, and the Monitoring agent may invoke."""
    stack = variants["devmon"].data
    assert variants["devmon"].cfg.service.public is False
    (check,) = stack["resource"]["google_monitoring_uptime_check_config"].values()
    assert check["http_check"]["service_agent_authentication"] == {"type": "OIDC_TOKEN"}
    invokers = [m["member"] for m in stack["resource"]["google_cloud_run_v2_service_iam_member"].values()]
    agent = (
        "serviceAccount:service-${data.google_project.project-number.number}@gcp-sa-monitoring-notification"
    )
    assert [m for m in invokers if m.startswith(agent)], invokers


def test_the_kill_switch_builds_as_the_build_account_into_our_registry(dev):
    """A dedicated build account has no rights on the `gcf-artifacts` repository Cloud Run functions
    would create: the function's image goes to the env's registry, where the build account may push."""
    (function,) = dev.of_type("google_cloudfunctions2_function").values()
    build = function["build_config"]
    assert "google_service_account.build_builder_account" in build["service_account"]
    # read through the push grant: the function is built only once the build account may push
    assert build["docker_repository"].startswith(
        "${google_artifact_registry_repository_iam_member.build_push"
    )
    (push,) = [
        m
        for m in dev.of_type("google_artifact_registry_repository_iam_member").values()
        if "build_builder_account" in m["member"]
    ]
    assert push["role"] == "roles/artifactregistry.writer"
