"""The CPU service on Cloud Run (v2) with the Managed Service for Prometheus sidecar.

- Its own service account: write logs, metrics and traces, read only the secrets it is given.
- One port (`app.contract.APP_PORT`, which Cloud Run passes to the app as PORT); probes: startup on
  READY_PATH (the model has loaded and warmed up), liveness on HEALTH_PATH.
- Secrets: each `secret_env` entry mounts a declared secret (modules.secrets) as an env var, read by the
  runtime service account alone (one accessor grant per secret). A declared secret has no value until
  scripts/bootstrap.sh adds one after the first apply, and a revision that mounts a secret without a
  version fails to start; so Terraform mounts them only with `mount_secret_env` (the stack: from phase
  `released` on). The grants exist from the start, and every release mounts the same secrets itself
  (`gcloud run deploy --update-secrets`, scripts/deploy.sh), so no released revision runs without them.
- The `collector` sidecar (Google's cloud-run-gmp-sidecar, pinned) starts after the app and scrapes its
  METRICS_PATH on METRICS_PORT (a port of its own that only the sidecar reaches: Cloud Run routes
  requests to the container port alone, where /metrics answers 404) as job METRICS_JOB (the job the
  alert rules and dashboards select on; the RunMonitoring config is mounted from Secret Manager, the
  sidecar's only way to read a config file). CPU is always
  allocated (`cpu_idle = false`, instance-based billing) so scrapes between requests are not throttled.
- Terraform owns the service; releases own the image and the traffic split: both are ignored here, so a
  release (a tagged no-traffic `candidate` revision, then promotion) is never undone by `cdktf deploy`.
  A `cdktf deploy` that changes the template makes a new revision that gets no traffic (traffic is pinned
  to a named revision); `scripts/deploy.sh --promote-latest` (run by `make apply`) gates and promotes it
  like a release. Terraform declares nothing about traffic.
- `gate_audience` is a custom audience: the release gate's ID token (from GitHub's workload identity,
  whose audience must be fixed before the candidate's URL exists) names it, and Cloud Run accepts a
  custom audience on every URL of the service, tagged revisions included.

Input: `CloudRunServiceInput` (image, size, scaling, access, env), the names of the service, its account,
the collector's secret and the gate's audience, and the declared secrets' references. Outputs: `name`,
`location`, `url`, `gate_audience`, `identity` (the runtime service account).
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml
from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_google.cloud_run_v2_service import (
    CloudRunV2Service,
    CloudRunV2ServiceTemplateContainers,
    CloudRunV2ServiceTemplateContainersEnv,
    CloudRunV2ServiceTemplateContainersVolumeMounts,
    CloudRunV2ServiceTemplateVolumes,
    CloudRunV2ServiceTemplateVolumesSecretItems,
)
from cdktf_cdktf_provider_google.secret_manager_secret import SecretManagerSecret
from cdktf_cdktf_provider_google.secret_manager_secret_version import SecretManagerSecretVersion
from constructs import Construct

from app.contract import APP_PORT, HEALTH_PATH, METRICS_JOB, METRICS_PATH, METRICS_PORT, READY_PATH
from modules.grants import run_service_role, secret_accessor
from modules.inputs import CloudRunServiceInput
from modules.service_identity import ServiceIdentity

__all__ = ["APP_PORT", "HEALTH_PATH", "READY_PATH", "CloudRunService", "run_monitoring_config"]
GMP_SIDECAR_IMAGE = (
    "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0"
)
INGRESS = {
    "all": "INGRESS_TRAFFIC_ALL",
    "internal": "INGRESS_TRAFFIC_INTERNAL_ONLY",
    "internal-and-cloud-load-balancing": "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
}
# Paths of fields that releases change (image, traffic) and gcloud stamps (client); Terraform ignores them.
RELEASE_OWNED = ["template[0].containers[0].image", "traffic", "client", "client_version"]


def run_monitoring_config(scrape_interval: str = "30s") -> dict:
    """The sidecar's RunMonitoring config: scrape the app's /metrics; the config's name becomes `job`."""
    return {
        "apiVersion": "monitoring.googleapis.com/v1beta",
        "kind": "RunMonitoring",
        "metadata": {"name": METRICS_JOB},
        "spec": {"endpoints": [{"port": METRICS_PORT, "path": METRICS_PATH, "interval": scrape_interval}]},
    }


class CloudRunService(Construct):
    """Cloud Run service `name` running `spec.initial_image` until the first release replaces it."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: CloudRunServiceInput,
        *,
        project: str,
        region: str,
        name: str,
        account_id: str,
        collector_secret_id: str,
        gate_audience: str,
        secret_refs: Mapping[str, str],
        mount_secret_env: bool,
        labels: Mapping[str, str],
    ) -> None:
        """`secret_refs`: secret id -> the declared secret's reference (modules.secrets);
        `mount_secret_env`: declare the secret env vars in the template (else only the read grants)."""
        super().__init__(scope, id_)
        self.identity = ServiceIdentity(
            self,
            "runtime",
            project=project,
            account_id=account_id,
            display_name="nanochat Cloud Run service",
            project_roles=[
                "roles/logging.logWriter",
                "roles/monitoring.metricWriter",
                "roles/cloudtrace.agent",
            ],
        )

        config_secret = SecretManagerSecret(
            self,
            "collector-config",
            project=project,
            secret_id=collector_secret_id,
            replication={"auto": {}},
            labels=dict(labels),
        )
        config_version = SecretManagerSecretVersion(
            self,
            "collector-config-version",
            secret=config_secret.id,
            secret_data=yaml.safe_dump(run_monitoring_config(), sort_keys=False),
        )
        readable = {
            "collector-config": config_secret.secret_id,
            **{s: secret_refs[s] for s in sorted(set(spec.secret_env.values()))},
        }
        accessors = [
            secret_accessor(
                self, f"read-{key}", project=project, secret_id=secret_id, member=self.identity.member
            )
            for key, secret_id in readable.items()
        ]

        # Cloud Run sets PORT; the app must also listen on all interfaces, whatever the image's default.
        plain_env = {"HOST": "0.0.0.0", "NANOCHAT_METRICS_PORT": str(METRICS_PORT), **spec.env}
        env_list = [CloudRunV2ServiceTemplateContainersEnv(name=k, value=v) for k, v in plain_env.items()]
        env_list += [
            CloudRunV2ServiceTemplateContainersEnv(
                name=k, value_source={"secret_key_ref": {"secret": secret_refs[s], "version": "latest"}}
            )
            for k, s in spec.secret_env.items()
            if mount_secret_env
        ]
        self.service = CloudRunV2Service(
            self,
            "service",
            project=project,
            location=region,
            name=name,
            ingress=INGRESS[spec.ingress],
            custom_audiences=[gate_audience],
            deletion_protection=spec.deletion_protection,
            labels=dict(labels),
            template={
                "service_account": self.identity.email,
                "execution_environment": "EXECUTION_ENVIRONMENT_GEN2",
                "max_instance_request_concurrency": spec.concurrency,
                "timeout": f"{spec.request_timeout_s}s",
                "scaling": {
                    "min_instance_count": spec.min_instances,
                    "max_instance_count": spec.max_instances,
                },
                "labels": dict(labels),
                "containers": [
                    CloudRunV2ServiceTemplateContainers(
                        name="app",
                        image=spec.initial_image,
                        ports={"name": "http1", "container_port": APP_PORT},
                        resources={
                            "limits": {"cpu": spec.cpu, "memory": spec.memory},
                            "cpu_idle": False,
                            "startup_cpu_boost": True,
                        },
                        # The model loads before /ready turns 200: allow up to 4 minutes.
                        startup_probe={
                            "http_get": {"path": READY_PATH, "port": APP_PORT},
                            "period_seconds": 5,
                            "timeout_seconds": 3,
                            "failure_threshold": 48,
                        },
                        liveness_probe={
                            "http_get": {"path": HEALTH_PATH, "port": APP_PORT},
                            "period_seconds": 15,
                            "timeout_seconds": 5,
                            "failure_threshold": 3,
                        },
                        env=env_list,
                    ),
                    CloudRunV2ServiceTemplateContainers(
                        name="collector",
                        image=GMP_SIDECAR_IMAGE,
                        depends_on=["app"],
                        resources={"limits": {"cpu": "1", "memory": "512Mi"}, "cpu_idle": False},
                        volume_mounts=[
                            CloudRunV2ServiceTemplateContainersVolumeMounts(
                                name="collector-config", mount_path="/etc/rungmp"
                            )
                        ],
                    ),
                ],
                "volumes": [
                    CloudRunV2ServiceTemplateVolumes(
                        name="collector-config",
                        secret={
                            "secret": config_secret.secret_id,
                            "items": [
                                CloudRunV2ServiceTemplateVolumesSecretItems(
                                    version="latest", path="config.yaml"
                                )
                            ],
                        },
                    )
                ],
            },
            lifecycle=TerraformResourceLifecycle(ignore_changes=RELEASE_OWNED),
            depends_on=[config_version, *accessors],
        )
        self.name = self.service.name
        self.location = self.service.location
        self.url = self.service.uri
        self.gate_audience = gate_audience

        members = ["allUsers"] if spec.public else list(spec.invokers)
        for member in members:
            run_service_role(
                self, f"invoker-{member}", project=project, location=region, service=self.name, member=member
            )
