"""`NanochatStack`: everything one environment needs, composed from `modules/` and one `EnvConfig`.

State lives in the env's GCS bucket (prefix per env). Every resource waits for the project's APIs;
every resource that takes labels carries `env`, `app`, `managed-by` (and the env file's extra labels).
The outputs are what the delivery scripts read (`cdktf output` / `terraform output -json`).
"""

from __future__ import annotations

from cdktf import GcsBackend, TerraformOutput, TerraformResource, TerraformStack
from cdktf_cdktf_provider_google.data_google_project import DataGoogleProject
from cdktf_cdktf_provider_google.project_service import ProjectService
from cdktf_cdktf_provider_google.provider import GoogleProvider
from constructs import Construct

from infra.config import ROOT, EnvConfig
from modules.alert_rules import load_alert_rules
from modules.artifact_registry import ArtifactRegistry
from modules.budget import Budget
from modules.build_trigger import BuildTrigger
from modules.cloud_run_service import CloudRunService
from modules.dashboards import read_dashboards
from modules.github_oidc import GitHubOidc
from modules.gpu_inference_group import GpuInferenceGroup
from modules.grafana import Grafana
from modules.http_load_balancer import HttpLoadBalancer
from modules.monitoring import Monitoring
from modules.network import GpuNetwork
from modules.project_services import ProjectServices

APIS = [
    "artifactregistry.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudtrace.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "sts.googleapis.com",
]


class NanochatStack(TerraformStack):
    def __init__(self, scope: Construct, cfg: EnvConfig) -> None:
        super().__init__(scope, cfg.name)
        labels = cfg.common_labels
        rules = load_alert_rules(ROOT / cfg.monitoring.alert_rules_dir)
        dashboards = read_dashboards(ROOT / cfg.grafana.dashboards_dir) if cfg.grafana.enabled else {}

        # The budget API needs a quota project when called with user credentials.
        GoogleProvider(
            self,
            "google",
            project=cfg.project,
            region=cfg.region,
            user_project_override=True,
            billing_project=cfg.project,
        )
        GcsBackend(self, bucket=cfg.state.bucket, prefix=cfg.state.prefix)
        apis = ProjectServices(self, "apis", project=cfg.project, services=APIS)
        project_number = DataGoogleProject(self, "project-number", project_id=cfg.project).number

        registry = ArtifactRegistry(
            self,
            "registry",
            project=cfg.project,
            location=cfg.region,
            repository_id=cfg.registry.repository,
            keep_recent_versions=cfg.registry.keep_recent_versions,
            delete_older_than_days=cfg.registry.delete_older_than_days,
            labels=labels,
        )
        build = BuildTrigger(
            self,
            "build",
            project=cfg.project,
            env=cfg.name,
            github_owner=cfg.github.owner,
            github_repo=cfg.github.repo,
            branch=cfg.github.deploy_branch,
            repository=registry.repository,
            image=f"{registry.url}/{cfg.service.name}",
            location=cfg.region,
            labels=labels,
        )
        service = CloudRunService(
            self,
            "service",
            project=cfg.project,
            region=cfg.region,
            env=cfg.name,
            name=cfg.service.name,
            initial_image=cfg.service.initial_image,
            cpu=cfg.service.cpu,
            memory=cfg.service.memory,
            min_instances=cfg.service.min_instances,
            max_instances=cfg.service.max_instances,
            concurrency=cfg.service.concurrency,
            request_timeout_s=cfg.service.request_timeout_s,
            ingress=cfg.service.ingress,
            public=cfg.service.public,
            invokers=cfg.service.invokers,
            deletion_protection=cfg.service.deletion_protection,
            env_vars=cfg.service.env,
            secret_env=cfg.service.secret_env,
            labels=labels,
        )
        github = GitHubOidc(
            self,
            "github",
            project=cfg.project,
            env=cfg.name,
            owner=cfg.github.owner,
            repo=cfg.github.repo,
            environment=cfg.github.environment or cfg.name,
            branch=cfg.github.deploy_branch,
            repository=registry.repository,
            service=service,
            build=build,
        )

        gpu_address = None
        if cfg.gpu.enabled:
            network = GpuNetwork(self, "network", project=cfg.project, region=cfg.region, env=cfg.name)
            gpu = GpuInferenceGroup(
                self,
                "gpu",
                project=cfg.project,
                region=cfg.region,
                env=cfg.name,
                network=network,
                zones=cfg.gpu.zones,
                machine_type=cfg.gpu.machine_type,
                accelerator_type=cfg.gpu.accelerator_type,
                accelerator_count=cfg.gpu.accelerator_count,
                image_project=cfg.gpu.image_project,
                image_family=cfg.gpu.image_family,
                disk_size_gb=cfg.gpu.disk_size_gb,
                container_image=f"{registry.url}/{cfg.gpu.image_name}:{cfg.gpu.image_tag}",
                repository=registry.repository,
                env_vars=cfg.gpu.env,
                secret_env=cfg.gpu.secret_env,
                spot=cfg.gpu.spot,
                target_size=cfg.gpu.target_size,
                max_surge=cfg.gpu.max_surge,
                autoscaling=cfg.gpu.autoscaling.model_dump() if cfg.gpu.autoscaling else None,
                labels=labels,
            )
            if cfg.gpu.load_balancer:
                gpu_address = HttpLoadBalancer(
                    self,
                    "gpu-lb",
                    project=cfg.project,
                    env=cfg.name,
                    group=gpu,
                    max_rate_per_instance=cfg.gpu.max_rate_per_instance,
                    request_timeout_s=cfg.service.request_timeout_s,
                    labels=labels,
                ).address

        monitoring = Monitoring(
            self,
            "monitoring",
            project=cfg.project,
            project_number=project_number,
            env=cfg.name,
            alert_emails=cfg.monitoring.alert_emails,
            rules=rules,
            evaluation_interval_s=cfg.monitoring.evaluation_interval_s,
            service=service,
            service_is_public=cfg.service.public,
            uptime_check_period_s=cfg.monitoring.uptime_check_period_s,
            labels=labels,
        )
        grafana = None
        if cfg.grafana.enabled:
            grafana = Grafana(
                self,
                "grafana",
                project=cfg.project,
                region=cfg.region,
                env=cfg.name,
                dashboards=dashboards,
                viewers=cfg.grafana.viewers,
                deletion_protection=cfg.service.deletion_protection,
                labels=labels,
            )
        Budget(
            self,
            "budget",
            env=cfg.name,
            billing_account=cfg.budget.billing_account,
            project_number=project_number,
            amount=cfg.budget.amount,
            currency=cfg.budget.currency,
            actual_thresholds=cfg.budget.actual_thresholds,
            forecast_thresholds=cfg.budget.forecast_thresholds,
            notification_channel_ids=[c.id for c in monitoring.channels],
        )

        # Nothing can be created before its API is on: make every resource wait for all of them.
        api_addresses = [f"{api.terraform_resource_type}.{api.friendly_unique_id}" for api in apis.resources]
        for node in self.node.find_all():
            if isinstance(node, TerraformResource) and not isinstance(node, ProjectService):
                node.depends_on = [*(node.depends_on or []), *api_addresses]

        outputs = {
            "project": cfg.project,
            "region": cfg.region,
            "service_name": service.name,
            "service_url": service.url,
            "registry_url": registry.url,
            "image": f"{registry.url}/{cfg.service.name}",
            "runtime_service_account": service.identity.email,
            "deployer_service_account": github.deployer.email,
            "build_service_account": build.service_account_name,
            "build_source_bucket": build.source_bucket.name,
            "workload_identity_provider": github.provider.name,
            "grafana_url": grafana.url if grafana else "",
            "gpu_address": gpu_address.address if gpu_address else "",
        }
        for name, value in outputs.items():
            TerraformOutput(self, name, value=value)
