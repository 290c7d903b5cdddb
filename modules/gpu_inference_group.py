"""GPU inference on Compute Engine: an NVIDIA L4 instance template and a regional managed instance group.

- Template: a g2 machine with its L4, a Deep Learning VM image family with the NVIDIA driver
  (`install-nvidia-driver`), on-host maintenance TERMINATE (GPUs cannot live-migrate), shielded VM
  (vTPM, integrity monitoring), no public IP, no project-wide SSH keys (OS Login), its own service
  account, and the boot metadata of `modules.gpu_vm_boot` (Ops Agent for Managed Prometheus, then the
  app container on the GPU).
- Group: regional, health check on `/health` for autohealing (with a delay for driver install and model
  load), rolling updates that replace VMs with a surge and nothing unavailable, and either a fixed size
  (0 by default: an idle group costs nothing) or an autoscaler on load-balancer utilization.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_google.artifact_registry_repository import ArtifactRegistryRepository
from cdktf_cdktf_provider_google.artifact_registry_repository_iam_member import (
    ArtifactRegistryRepositoryIamMember,
)
from cdktf_cdktf_provider_google.compute_health_check import ComputeHealthCheck
from cdktf_cdktf_provider_google.compute_instance_template import (
    ComputeInstanceTemplate,
    ComputeInstanceTemplateDisk,
    ComputeInstanceTemplateGuestAccelerator,
    ComputeInstanceTemplateNetworkInterface,
)
from cdktf_cdktf_provider_google.compute_region_autoscaler import ComputeRegionAutoscaler
from cdktf_cdktf_provider_google.compute_region_instance_group_manager import (
    ComputeRegionInstanceGroupManager,
    ComputeRegionInstanceGroupManagerNamedPort,
    ComputeRegionInstanceGroupManagerVersion,
)
from cdktf_cdktf_provider_google.secret_manager_secret_iam_member import SecretManagerSecretIamMember
from constructs import Construct

from modules.gpu_vm_boot import APP_PORT, boot_metadata
from modules.network import GpuNetwork
from modules.service_identity import ServiceIdentity

HEALTH_PATH = "/health"
PORT_NAME = "http"
# Seconds before autohealing and the autoscaler judge a new VM: first boot installs the driver and the
# Ops Agent, pulls the image and loads the model.
STARTUP_GRACE_S = 900
# Secure Boot stays off: the Deep Learning VM's driver install builds unsigned kernel modules.
SECURE_BOOT = False


class GpuInferenceGroup(Construct):
    """Regional MIG `nanochat-gpu-ENV` of `machine_type` VMs, each with `accelerator_count` GPUs."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        region: str,
        env: str,
        network: GpuNetwork,
        zones: Sequence[str],
        machine_type: str,
        accelerator_type: str,
        accelerator_count: int,
        image_project: str,
        image_family: str,
        disk_size_gb: int,
        container_image: str,
        repository: ArtifactRegistryRepository,
        env_vars: Mapping[str, str],
        secret_env: Mapping[str, str],
        spot: bool,
        target_size: int,
        max_surge: int,
        autoscaling: Mapping[str, float] | None,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        name = f"nanochat-gpu-{env}"
        self.identity = ServiceIdentity(
            self,
            "vm",
            project=project,
            account_id=f"nanochat-gpu-{env}",
            display_name="nanochat GPU VMs",
            project_roles=["roles/logging.logWriter", "roles/monitoring.metricWriter"],
        )
        ArtifactRegistryRepositoryIamMember(
            self,
            "pull",
            project=project,
            location=repository.location,
            repository=repository.name,
            role="roles/artifactregistry.reader",
            member=self.identity.member,
        )
        for secret in sorted(set(secret_env.values())):
            SecretManagerSecretIamMember(
                self,
                f"read-{secret}",
                project=project,
                secret_id=secret,
                role="roles/secretmanager.secretAccessor",
                member=self.identity.member,
            )
        network.allow_health_checks(port=APP_PORT, target_service_account=self.identity.email)

        self.template = ComputeInstanceTemplate(
            self,
            "template",
            project=project,
            region=region,
            name_prefix=f"{name}-",
            description="nanochat on an NVIDIA GPU (Deep Learning VM, app container via the startup script)",
            machine_type=machine_type,
            labels=dict(labels),
            guest_accelerator=[
                ComputeInstanceTemplateGuestAccelerator(type=accelerator_type, count=accelerator_count)
            ],
            disk=[
                ComputeInstanceTemplateDisk(
                    boot=True,
                    auto_delete=True,
                    source_image=f"projects/{image_project}/global/images/family/{image_family}",
                    disk_size_gb=disk_size_gb,
                    disk_type="pd-balanced",
                    labels=dict(labels),
                )
            ],
            scheduling={
                "on_host_maintenance": "TERMINATE",
                "automatic_restart": not spot,
                "preemptible": spot,
                "provisioning_model": "SPOT" if spot else "STANDARD",
                **({"instance_termination_action": "DELETE"} if spot else {}),
            },
            shielded_instance_config={
                "enable_secure_boot": SECURE_BOOT,
                "enable_vtpm": True,
                "enable_integrity_monitoring": True,
            },
            # no access_config: no public IP
            network_interface=[ComputeInstanceTemplateNetworkInterface(subnetwork=network.subnetwork.id)],
            service_account={"email": self.identity.email, "scopes": ["cloud-platform"]},
            metadata=boot_metadata(image=container_image, env=env_vars, secret_env=secret_env),
            # A changed template is a new template; the group rolls to it before the old one goes.
            lifecycle=TerraformResourceLifecycle(create_before_destroy=True),
        )

        self.health_check = ComputeHealthCheck(
            self,
            "health",
            project=project,
            name=f"{name}-health",
            check_interval_sec=10,
            timeout_sec=5,
            healthy_threshold=2,
            unhealthy_threshold=3,
            http_health_check={"port": APP_PORT, "request_path": HEALTH_PATH},
            log_config={"enable": True},
        )

        self.group = ComputeRegionInstanceGroupManager(
            self,
            "group",
            project=project,
            region=region,
            name=name,
            base_instance_name=name,
            distribution_policy_zones=list(zones),
            version=[
                ComputeRegionInstanceGroupManagerVersion(
                    name="primary", instance_template=self.template.self_link_unique
                )
            ],
            # With an autoscaler attached the size is the autoscaler's, never Terraform's.
            target_size=None if autoscaling else target_size,
            named_port=[ComputeRegionInstanceGroupManagerNamedPort(name=PORT_NAME, port=APP_PORT)],
            auto_healing_policies={
                "health_check": self.health_check.id,
                "initial_delay_sec": STARTUP_GRACE_S,
            },
            update_policy={
                "type": "PROACTIVE",
                "minimal_action": "REPLACE",
                "replacement_method": "SUBSTITUTE",
                "max_surge_fixed": max_surge,
                "max_unavailable_fixed": 0,
            },
            wait_for_instances=False,
        )

        self.autoscaler = None
        if autoscaling:
            self.autoscaler = ComputeRegionAutoscaler(
                self,
                "autoscaler",
                project=project,
                region=region,
                name=name,
                target=self.group.id,
                autoscaling_policy={
                    "mode": "ON",
                    "min_replicas": int(autoscaling["min_replicas"]),
                    "max_replicas": int(autoscaling["max_replicas"]),
                    "cooldown_period": STARTUP_GRACE_S,
                    "load_balancing_utilization": {"target": autoscaling["target_utilization"]},
                },
            )
