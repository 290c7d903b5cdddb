"""Grafana on Cloud Run, private (IAM), with the repository's dashboards and a Managed Prometheus datasource.

- Dashboards (`dashboards/*.json`) and Grafana's provisioning files are objects in a private bucket,
  mounted read-only into the container (Cloud Storage volume), so a deploy that changes a dashboard
  changes the object and Grafana picks it up on its next provisioning scan.
- The datasource is Google's Managed Prometheus frontend, a sidecar on localhost:9090 that answers the
  Prometheus HTTP API by querying Cloud Monitoring as Grafana's service account. The sidecar takes its
  OAuth token from the metadata server and refreshes it itself, so no token is stored in Grafana.
- Access: no public invoker; viewers get `roles/run.invoker` and open Grafana through
  `gcloud run services proxy`. Inside, everyone is an anonymous Viewer and the login form is off: the
  dashboards are provisioned, not edited.
- Alerting: Grafana-managed alert rules from the same `alerts/` rule files as Cloud Monitoring's policies
  (`modules.alert_rules.grafana_alerting`: the warnings; critical alerts page through Cloud Monitoring
  only, so nothing is emailed twice), an email contact point for `alert_emails` and the policy routing to
  it, provisioned like the dashboards. Email goes out through `smtp` (host:port, user, from address, and
  the password as a Secret Manager secret mounted as GF_SMTP_PASSWORD); Cloud Run blocks outbound port 25,
  so the host must name another port (587 or 465). With SMTP, Grafana runs one instance all the time with
  CPU always allocated, because a Grafana scaled to zero evaluates no rules; without SMTP it scales to zero
  and shows the rules' state only while it runs (synth warns that email needs SMTP).

Input: `GrafanaInput` (SMTP, viewers, dashboards, alert rules, deletion protection), the names of the
service, its account and its bucket, and the alert emails. Outputs: `url`, `identity`, `bucket`,
`alerting` (the provisioned alerting document).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml
from cdktf import Annotations
from cdktf_cdktf_provider_google.cloud_run_v2_service import (
    CloudRunV2Service,
    CloudRunV2ServiceTemplateContainers,
    CloudRunV2ServiceTemplateContainersEnv,
    CloudRunV2ServiceTemplateContainersVolumeMounts,
    CloudRunV2ServiceTemplateVolumes,
)
from cdktf_cdktf_provider_google.storage_bucket_object import StorageBucketObject
from constructs import Construct

from modules.alert_rules import grafana_alerting
from modules.grants import bucket_role, run_service_role, secret_accessor
from modules.inputs import GrafanaInput, GrafanaSmtp
from modules.private_bucket import private_bucket
from modules.service_identity import ServiceIdentity

GRAFANA_IMAGE = "docker.io/grafana/grafana:11.6.0"
GMP_FRONTEND_IMAGE = "gke.gcr.io/prometheus-engine/frontend:v0.8.0-gke.4"
GRAFANA_PORT = 3000
FRONTEND_PORT = 9090
MOUNT = "/mnt/grafana"
DATASOURCE_UID = "managed-prometheus"
EVALUATION_INTERVAL_S = 60
BLOCKED_SMTP_PORT = 25  # Cloud Run cannot connect out on port 25


def smtp_env(smtp: GrafanaSmtp) -> dict[str, str]:
    """Grafana's SMTP settings as its environment variables (GF_SMTP_PASSWORD comes from the secret)."""
    host, _, port = smtp.host.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"grafana.smtp.host must be host:port (e.g. smtp.example.com:587), not {smtp.host!r}"
        )
    if int(port) == BLOCKED_SMTP_PORT:
        raise ValueError(
            f"grafana.smtp.host {smtp.host!r}: Cloud Run blocks outbound connections to port 25; "
            "use the provider's submission port (587, STARTTLS) or 465 (TLS)"
        )
    return {
        "GF_SMTP_ENABLED": "true",
        "GF_SMTP_HOST": smtp.host,
        "GF_SMTP_USER": smtp.user,
        "GF_SMTP_FROM_ADDRESS": smtp.from_address,
    }


def datasource_provisioning() -> dict:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Managed Prometheus",
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": f"http://localhost:{FRONTEND_PORT}",
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": "30s"},
            }
        ],
    }


def dashboard_provisioning() -> dict:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "nanochat",
                "folder": "nanochat",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": f"{MOUNT}/dashboards"},
            }
        ],
    }


class Grafana(Construct):
    """Cloud Run service `name` serving `spec.dashboards` (file name -> JSON text) to `spec.viewers`, with
    alert `spec.rules` emailed to `alert_emails` through `spec.smtp` (None: no email)."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: GrafanaInput,
        *,
        project: str,
        region: str,
        env: str,
        name: str,
        account_id: str,
        bucket: str,
        alert_emails: Sequence[str],
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        smtp, dashboards, deletion_protection = spec.smtp, spec.dashboards, spec.deletion_protection
        self.alerting = grafana_alerting(
            list(spec.rules),
            datasource_uid=DATASOURCE_UID,
            emails=list(alert_emails),
            interval_s=EVALUATION_INTERVAL_S,
        )
        emails = bool(smtp and alert_emails and self.alerting["groups"])
        if self.alerting["groups"] and not emails:
            Annotations.of(self).add_warning(
                f"grafana ({env}): alert rules are provisioned but Grafana sends no email: "
                + ("set grafana.smtp" if alert_emails else "no alert_emails")
                + " (docs/observability.md#alerting)"
            )
        self.identity = ServiceIdentity(
            self,
            "runtime",
            project=project,
            account_id=account_id,
            display_name="nanochat Grafana",
            project_roles=["roles/monitoring.viewer"],
        )
        self.bucket = private_bucket(
            self,
            "bucket",
            project=project,
            name=bucket,
            region=region,
            storage_class="STANDARD",
            delete_when={"num_newer_versions": 5},
            force_destroy=not deletion_protection,
            labels=labels,
        )
        bucket_role(self, "read", bucket=self.bucket.name, member=self.identity.member)
        files = {
            "provisioning/datasources/managed-prometheus.yaml": yaml.safe_dump(datasource_provisioning()),
            "provisioning/dashboards/nanochat.yaml": yaml.safe_dump(dashboard_provisioning()),
            "provisioning/alerting/nanochat.yaml": yaml.safe_dump(self.alerting, sort_keys=False),
            **{f"dashboards/{name}": text for name, text in sorted(dashboards.items())},
        }
        self.objects = [
            StorageBucketObject(
                self,
                f"object-{path.replace('/', '-')}",
                bucket=self.bucket.name,
                name=path,
                content=text,
                content_type="application/json" if path.endswith(".json") else "application/yaml",
            )
            for path, text in files.items()
        ]

        grafana_env = {
            "GF_PATHS_PROVISIONING": f"{MOUNT}/provisioning",
            "GF_AUTH_ANONYMOUS_ENABLED": "true",
            "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            "GF_AUTH_DISABLE_LOGIN_FORM": "true",
            "GF_AUTH_BASIC_ENABLED": "false",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{MOUNT}/dashboards/{sorted(dashboards)[0]}",
            **(smtp_env(smtp) if smtp else {}),
        }
        secret_env = []
        self.smtp_secret_access = None
        if smtp:
            self.smtp_secret_access = secret_accessor(
                self,
                "smtp-password-access",
                project=project,
                secret_id=smtp.password_secret,
                member=self.identity.member,
            )
            secret_env.append(
                CloudRunV2ServiceTemplateContainersEnv(
                    name="GF_SMTP_PASSWORD",
                    value_source={"secret_key_ref": {"secret": smtp.password_secret, "version": "latest"}},
                )
            )
        self.service = CloudRunV2Service(
            self,
            "service",
            project=project,
            location=region,
            name=name,
            ingress="INGRESS_TRAFFIC_ALL",
            deletion_protection=deletion_protection,
            labels=dict(labels),
            template={
                "service_account": self.identity.email,
                "execution_environment": "EXECUTION_ENVIRONMENT_GEN2",  # Cloud Storage volumes need gen2
                # One Grafana evaluates the rules (two would email twice); it must run to evaluate them.
                "scaling": {"min_instance_count": 1 if emails else 0, "max_instance_count": 1},
                "labels": dict(labels),
                "containers": [
                    CloudRunV2ServiceTemplateContainers(
                        name="grafana",
                        image=GRAFANA_IMAGE,
                        ports={"name": "http1", "container_port": GRAFANA_PORT},
                        depends_on=["prometheus-frontend"],
                        resources={"limits": {"cpu": "1", "memory": "512Mi"}, "cpu_idle": not emails},
                        env=[
                            CloudRunV2ServiceTemplateContainersEnv(name=k, value=v)
                            for k, v in grafana_env.items()
                        ]
                        + secret_env,
                        startup_probe={
                            "http_get": {"path": "/api/health", "port": GRAFANA_PORT},
                            "period_seconds": 5,
                            "failure_threshold": 24,
                        },
                        volume_mounts=[
                            CloudRunV2ServiceTemplateContainersVolumeMounts(
                                name="provisioning", mount_path=MOUNT
                            )
                        ],
                    ),
                    CloudRunV2ServiceTemplateContainers(
                        name="prometheus-frontend",
                        image=GMP_FRONTEND_IMAGE,
                        args=[f"--web.listen-address=:{FRONTEND_PORT}", f"--query.project-id={project}"],
                        resources={"limits": {"cpu": "1", "memory": "256Mi"}, "cpu_idle": not emails},
                        startup_probe={"tcp_socket": {"port": FRONTEND_PORT}, "period_seconds": 2},
                    ),
                ],
                "volumes": [
                    CloudRunV2ServiceTemplateVolumes(
                        name="provisioning", gcs={"bucket": self.bucket.name, "read_only": True}
                    )
                ],
            },
            depends_on=[*self.objects, *filter(None, [self.smtp_secret_access])],
        )
        self.url = self.service.uri
        for member in spec.viewers:
            run_service_role(
                self,
                f"viewer-{member}",
                project=project,
                location=region,
                service=self.service.name,
                member=member,
            )
