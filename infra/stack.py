"""`NanochatStack`: everything one environment needs, composed from `modules/` and one `EnvConfig`.

State lives in the env's GCS bucket (prefix per env). Every resource that takes labels carries `env`,
`app`, `managed-by` (and the env file's extra labels). Names come from `infra/names.py`, which the scripts
read too. The outputs are what the delivery scripts read (`cdktf output` / `terraform output -json`).

First apply on an empty project: the APIs are enabled first, then a `time_sleep` lets them and their
service agents propagate, and every other resource (and the project data source) depends on that wait.

Phases (`phase` in the env file, each a superset of the one before):
- foundation: APIs (+ wait), registry, identities, workload identity, secrets (declared, no values),
  build bucket, Cloud Run on the placeholder image, network, the GPU template and group held at 0 with no
  autoscaler, load balancer, email channels, budget (+ kill switch when enabled).
- released: the GPU group takes its configured size (fixed, autoscaler, schedule).
- monitored: PromQL alert policies, uptime check and Grafana, once the app's series exist (Managed
  Prometheus rejects alert conditions on metrics that were never written).
"""

from __future__ import annotations

from cdktf import GcsBackend, TerraformDataSource, TerraformOutput, TerraformResource, TerraformStack
from cdktf_cdktf_provider_google.data_google_project import DataGoogleProject
from cdktf_cdktf_provider_google.project_service import ProjectService
from cdktf_cdktf_provider_google.provider import GoogleProvider
from cdktf_cdktf_provider_time.provider import TimeProvider
from constructs import Construct

from app.observability.tracing import tracing_requested
from infra import names
from infra.config import ROOT, EnvConfig
from modules.alert_rules import alerting_rules, load_alert_rules
from modules.artifact_registry import ArtifactRegistry
from modules.budget import Budget
from modules.build_trigger import BuildTrigger
from modules.cloud_run_service import CloudRunService
from modules.dashboards import read_dashboards
from modules.dataprep import API as DATAPROC_API
from modules.dataprep import Dataprep
from modules.github_oidc import GitHubOidc
from modules.gpu_inference_group import GpuInferenceGroup
from modules.grafana import Grafana
from modules.http_load_balancer import HttpLoadBalancer
from modules.inputs import GrafanaInput, MonitoringInput
from modules.kill_switch import KillSwitch
from modules.monitoring import AlertChannels, Monitoring
from modules.network import GpuNetwork
from modules.project_services import ProjectServices
from modules.secrets import Secrets

APIS = [
    "artifactregistry.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",  # the kill switch (Cloud Run functions)
    "cloudresourcemanager.googleapis.com",
    "cloudtrace.googleapis.com",
    "compute.googleapis.com",
    "eventarc.googleapis.com",  # the kill switch's Pub/Sub trigger
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",  # the budget's kill-switch topic
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "sts.googleapis.com",
]


class NanochatStack(TerraformStack):
    def __init__(self, scope: Construct, cfg: EnvConfig) -> None:
        super().__init__(scope, cfg.name)
        labels = cfg.common_labels

        # The budget API needs a quota project when called with user credentials.
        GoogleProvider(
            self,
            "google",
            project=cfg.project,
            region=cfg.region,
            user_project_override=True,
            billing_project=cfg.project,
        )
        TimeProvider(self, "time")
        GcsBackend(self, bucket=cfg.state.bucket, prefix=cfg.state.prefix)
        services = [*APIS, DATAPROC_API] if cfg.dataprep.enabled else APIS
        apis = ProjectServices(self, "apis", project=cfg.project, services=services)
        project_number = DataGoogleProject(self, "project-number", project_id=cfg.project).number

        secrets = Secrets(self, "secrets", project=cfg.project, secrets=cfg.secrets, labels=labels)
        registry = ArtifactRegistry(
            self, "registry", cfg.registry, project=cfg.project, location=cfg.region, labels=labels
        )
        build = BuildTrigger(
            self,
            "build",
            cfg.github,
            project=cfg.project,
            location=cfg.region,
            trigger_name=names.build_trigger(cfg),
            account_id=names.build_account_id(cfg),
            bucket=names.build_source_bucket(cfg),
            repository=registry.name,
            repository_location=registry.location,
            image=names.image_repo(cfg),
            gpu_image=names.gpu_image_repo(cfg) if cfg.gpu.enabled else None,
            labels=labels,
        )
        service = CloudRunService(
            self,
            "service",
            cfg.service,
            project=cfg.project,
            region=cfg.region,
            name=names.service_name(cfg),
            account_id=names.runtime_account_id(cfg),
            collector_secret_id=names.collector_config_secret(cfg),
            gate_audience=names.gate_audience(cfg),
            secret_refs=secrets.ids,
            mount_secret_env=cfg.released,  # the secrets have values only after bootstrap's first phase
            labels=labels,
        )

        gpu = gpu_lb = None
        if cfg.gpu.enabled:
            network = GpuNetwork(self, "network", project=cfg.project, region=cfg.region, env=cfg.name)
            gpu = GpuInferenceGroup(
                self,
                "gpu",
                cfg.gpu,
                project=cfg.project,
                region=cfg.region,
                name=names.gpu_group(cfg),
                account_id=names.gpu_account_id(cfg),
                subnetwork_id=network.subnetwork_id,
                repository=registry.name,
                repository_location=registry.location,
                secret_refs=secrets.ids,
                released=cfg.released,
                labels=labels,
            )
            network.allow_health_checks(target_service_account=gpu.identity.email)
            if cfg.gpu.load_balancer:
                gpu_lb = HttpLoadBalancer(
                    self,
                    "gpu-lb",
                    cfg.gpu.load_balancer_input(request_timeout_s=cfg.service.request_timeout_s),
                    project=cfg.project,
                    name=names.gpu_group(cfg),
                    instance_group=gpu.instance_group,
                    health_check=gpu.ready_check_id,
                    labels=labels,
                )

        github = GitHubOidc(
            self,
            "github",
            cfg.github,
            project=cfg.project,
            env=cfg.name,
            pool_id=names.WIF_POOL_ID,
            provider_id=names.WIF_PROVIDER_ID,
            account_id=names.deployer_account_id(cfg),
            repository=registry.name,
            repository_location=registry.location,
            service_name=service.name,
            service_location=service.location,
            build_bucket=build.source_bucket_name,
            runtime_account=service.identity.name,
            build_account=build.identity.name,
            gpu_account=gpu.identity.name if gpu else None,
            api_keys_secret=secrets.ids[cfg.service.api_keys_secret] if cfg.service.api_keys_secret else None,
        )

        monitoring_outputs = self._observability(cfg, project_number, service, build, labels)

        dataprep = None
        if cfg.dataprep.enabled:
            dataprep = Dataprep(
                self,
                "dataprep",
                cfg.dataprep,
                project=cfg.project,
                region=cfg.region,
                bucket=names.dataprep_bucket(cfg),
                account_id=names.dataprep_account_id(cfg),
                network=names.dataprep_network(cfg),
                labels=labels,
            )

        # Nothing can be created before its API is on and has propagated: every resource and data source
        # waits for the time_sleep, which waits for every enablement.
        wait = f"{apis.wait.terraform_resource_type}.{apis.wait.friendly_unique_id}"
        for node in self.node.find_all():
            if node is apis.wait or isinstance(node, ProjectService):
                continue
            if isinstance(node, TerraformResource | TerraformDataSource):
                node.depends_on = [*(node.depends_on or []), wait]

        outputs = {
            "project": cfg.project,
            "region": cfg.region,
            "service_name": service.name,
            "service_url": service.url,
            "registry_url": registry.url,
            "image": names.image_repo(cfg),
            "gpu_image": names.gpu_image_repo(cfg) if gpu else "",
            "gpu_group": names.gpu_group(cfg) if gpu else "",
            "runtime_service_account": service.identity.email,
            "deployer_service_account": github.deployer.email,
            "build_service_account": build.identity.email,
            "build_source_bucket": build.source_bucket_name,
            "workload_identity_provider": github.provider.name,
            "gate_audience": service.gate_audience,
            "gpu_address": gpu_lb.address.address if gpu_lb else "",
            "gpu_url": gpu_lb.url if gpu_lb else "",
            **monitoring_outputs,
            "dataprep_bucket": dataprep.bucket_name if dataprep else "",
            "dataprep_service_account": dataprep.identity.email if dataprep else "",
            "dataprep_subnet": dataprep.subnetwork_id if dataprep else "",
        }
        for name, value in outputs.items():
            TerraformOutput(self, name, value=value)

    def _observability(
        self,
        cfg: EnvConfig,
        project_number: str,
        service: CloudRunService,
        build: BuildTrigger,
        labels: dict[str, str],
    ) -> dict[str, str]:
        """The other helpers' constructs, in one place: email channels and budget always (with the kill
        switch when enabled), alert policies and Grafana only once the env is `monitored`."""
        channels = AlertChannels(
            self,
            "alert-channels",
            project=cfg.project,
            env=cfg.name,
            alert_emails=cfg.monitoring.alert_emails,
            labels=labels,
        )
        kill_switch = None
        if cfg.budget.kill_switch:
            kill_switch = KillSwitch(
                self,
                "kill-switch",
                project=cfg.project,
                region=cfg.region,
                env=cfg.name,
                topic_name=names.kill_switch_topic(cfg),
                function_name=names.kill_switch_function(cfg),
                account_id=names.kill_switch_account_id(cfg),
                bucket=names.kill_switch_bucket(cfg),
                gpu_group=names.gpu_group(cfg) if cfg.gpu.enabled else None,
                service_name=names.service_name(cfg),
                labels=labels,
                notification_channel_ids=channels.ids,  # the "kill switch acted" alert
                runtime_service_account=service.identity.email,
                build_service_account=build.service_account_name,
                docker_repository=build.pushable_repository,  # the build account may push there
            )
        Budget(
            self,
            "budget",
            cfg.budget,
            env=cfg.name,
            project_number=project_number,
            notification_channel_ids=channels.ids,
            pubsub_topic=kill_switch.budget_topic_id if kill_switch else None,
        )

        grafana = None
        if cfg.monitored:
            rules = tuple(load_alert_rules(ROOT / cfg.monitoring.alert_rules_dir))
            scales_to_zero = cfg.service.min_instances == 0
            traced = tracing_requested(cfg.service.env) or (
                cfg.gpu.enabled and tracing_requested(cfg.gpu.env)
            )  # the trace-export alert only where traces are exported
            grafana_emails = cfg.grafana.enabled and cfg.grafana.smtp is not None
            Monitoring(
                self,
                "monitoring",
                MonitoringInput(
                    evaluation_interval_s=cfg.monitoring.evaluation_interval_s,
                    uptime_check_period_s=cfg.monitoring.uptime_check_period_s,
                    rules=rules,
                    service_is_public=cfg.service.public,
                    scales_to_zero=scales_to_zero,
                    traced=traced,
                    # warnings: emailed by Grafana where it can send mail, else by these policies
                    notify_warnings=not grafana_emails,
                ),
                project=cfg.project,
                project_number=project_number,
                env=cfg.name,
                channel_ids=channels.ids,
                service_name=service.name,
                service_location=service.location,
                service_url=service.url,
                labels=labels,
            )
            if cfg.grafana.enabled:
                grafana = Grafana(
                    self,
                    "grafana",
                    GrafanaInput(
                        smtp=cfg.grafana.smtp,
                        viewers=cfg.grafana.viewers,
                        dashboards=read_dashboards(ROOT / cfg.grafana.dashboards_dir),
                        rules=alerting_rules(list(rules), scales_to_zero=scales_to_zero, traced=traced),
                        deletion_protection=cfg.service.deletion_protection,
                    ),
                    project=cfg.project,
                    region=cfg.region,
                    env=cfg.name,
                    name=names.grafana_service(cfg),
                    account_id=names.grafana_account_id(cfg),
                    bucket=names.grafana_bucket(cfg),
                    alert_emails=cfg.monitoring.alert_emails,
                    labels=labels,
                )
        return {
            "grafana_url": grafana.url if grafana else "",
            "kill_switch_topic": kill_switch.topic.name if kill_switch else "",
        }
