"""GPU inference on Compute Engine: an NVIDIA L4 instance template and a regional managed instance group.

- Template: a g2 machine with its L4, a Deep Learning VM image family with the NVIDIA driver preinstalled,
  on-host maintenance TERMINATE (GPUs cannot live-migrate), shielded VM (vTPM, integrity monitoring), no
  public IP, no project-wide SSH keys (OS Login), its own service account, and the boot metadata of
  `modules.gpu_vm_boot` (Ops Agent for Managed Prometheus, then the app container on the GPU). The template
  names no image: releases own it, as a digest in the group's all-instances configuration (metadata
  `nanochat-image`), which Terraform ignores; with a PROACTIVE update policy the group rolls on a new one.
- Two health checks: READY_PATH for the load balancer (traffic only once the model is loaded) and
  HEALTH_PATH for autohealing (recreate a VM whose process stopped answering), after a startup grace.
- Size: before the first release (`released` false) the group is held at 0 with no autoscaler (there is no
  image to run). Then either a fixed size, or an autoscaler: on load-balancer utilization (`autoscaling`),
  and/or a working-hours scaling schedule (`schedule`). Scaling schedules need one other signal; without
  a load balancer that is CPU utilization, capped at the schedule's size.
- Terraform waits until the group is STABLE (every VM created and running), so a VM that cannot be
  created (no GPU capacity, quota) fails the apply instead of hiding.

Input: `GpuGroupInput` (machine, GPUs, image family, size, autoscaling, schedule, env), the names of the
group and its account, the subnetwork id, the repository it pulls from, the declared secrets' references,
and whether a release exists. Outputs: `identity` (the VMs' service account), `ready_check_id` (for the
load balancer), `instance_group`, `image_metadata_key`.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf import TerraformResourceLifecycle
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
from cdktf_cdktf_provider_google.compute_region_autoscaler import (
    ComputeRegionAutoscaler,
    ComputeRegionAutoscalerAutoscalingPolicyScalingSchedules,
)
from cdktf_cdktf_provider_google.compute_region_instance_group_manager import (
    ComputeRegionInstanceGroupManager,
    ComputeRegionInstanceGroupManagerNamedPort,
    ComputeRegionInstanceGroupManagerVersion,
)
from constructs import Construct

from app.contract import APP_PORT, HEALTH_PATH, READY_PATH
from modules.gpu_vm_boot import IMAGE_KEY, boot_metadata
from modules.grants import secret_accessor
from modules.inputs import GpuGroupInput
from modules.service_identity import ServiceIdentity

PORT_NAME = "http"
# Seconds before autohealing and the autoscaler judge a new VM: first boot installs the Ops Agent, pulls
# the image and loads the model.
STARTUP_GRACE_S = 900
# Secure Boot stays off: the Deep Learning VM's NVIDIA kernel modules are not signed for it.
SECURE_BOOT = False
# Releases own the image (all-instances metadata); Terraform never undoes them.
RELEASE_OWNED = ["all_instances_config"]
# How long an apply waits for the group to become stable (VM creation, boot, image pull, model load).
WAIT_TIMEOUT = "45m"
# The signal a scaling schedule needs beside it when there is no load balancer (capped by max replicas).
SCHEDULE_CPU_TARGET = 0.9


class GpuInferenceGroup(Construct):
    """Regional MIG `name` of `spec.machine_type` VMs, each with `spec.accelerator_count` GPUs."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: GpuGroupInput,
        *,
        project: str,
        region: str,
        name: str,
        account_id: str,
        subnetwork_id: str,
        repository: str,
        repository_location: str,
        secret_refs: Mapping[str, str],
        released: bool,
        labels: Mapping[str, str],
    ) -> None:
        """`repository`, `repository_location`: the Artifact Registry repository the VMs pull from;
        `secret_refs`: secret id -> the declared secret's reference (modules.secrets); `released`: a
        release exists (before it, the group is held at 0)."""
        super().__init__(scope, id_)
        self.identity = ServiceIdentity(
            self,
            "vm",
            project=project,
            account_id=account_id,
            display_name="nanochat GPU VMs",
            project_roles=["roles/logging.logWriter", "roles/monitoring.metricWriter"],
        )
        ArtifactRegistryRepositoryIamMember(
            self,
            "pull",
            project=project,
            location=repository_location,
            repository=repository,
            role="roles/artifactregistry.reader",
            member=self.identity.member,
        )
        for secret in sorted(set(spec.secret_env.values())):
            secret_accessor(
                self,
                f"read-{secret}",
                project=project,
                secret_id=secret_refs[secret],
                member=self.identity.member,
            )
        spot = spec.spot

        self.template = ComputeInstanceTemplate(
            self,
            "template",
            project=project,
            region=region,
            name_prefix=f"{name}-",
            description="nanochat on an NVIDIA GPU (Deep Learning VM, app container via the startup script)",
            machine_type=spec.machine_type,
            labels=dict(labels),
            guest_accelerator=[
                ComputeInstanceTemplateGuestAccelerator(
                    type=spec.accelerator_type, count=spec.accelerator_count
                )
            ],
            disk=[
                ComputeInstanceTemplateDisk(
                    boot=True,
                    auto_delete=True,
                    source_image=f"projects/{spec.image_project}/global/images/family/{spec.image_family}",
                    disk_size_gb=spec.disk_size_gb,
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
            network_interface=[ComputeInstanceTemplateNetworkInterface(subnetwork=subnetwork_id)],
            service_account={"email": self.identity.email, "scopes": ["cloud-platform"]},
            metadata=boot_metadata(env=spec.env, secret_env=spec.secret_env),
            # A changed template is a new template; the group rolls to it before the old one goes.
            lifecycle=TerraformResourceLifecycle(create_before_destroy=True),
        )

        self.health_check, self.ready_check = (
            ComputeHealthCheck(
                self,
                check_id,
                project=project,
                name=f"{name}-{check_id}",
                description=description,
                check_interval_sec=10,
                timeout_sec=5,
                healthy_threshold=2,
                unhealthy_threshold=3,
                http_health_check={"port": APP_PORT, "request_path": path},
                log_config={"enable": True},
            )
            for check_id, path, description in (
                ("health", HEALTH_PATH, "autohealing: the process answers"),
                ("ready", READY_PATH, "load balancing: the model is loaded"),
            )
        )
        autoscaling, schedule = spec.autoscaling, spec.schedule
        scaled = released and bool(autoscaling or schedule)

        self.group = ComputeRegionInstanceGroupManager(
            self,
            "group",
            project=project,
            region=region,
            name=name,
            base_instance_name=name,
            distribution_policy_zones=list(spec.zones),
            version=[
                ComputeRegionInstanceGroupManagerVersion(
                    name="primary", instance_template=self.template.self_link_unique
                )
            ],
            # Held at 0 until a release exists; with an autoscaler the size is the autoscaler's.
            target_size=None if scaled else (spec.target_size if released else 0),
            named_port=[ComputeRegionInstanceGroupManagerNamedPort(name=PORT_NAME, port=APP_PORT)],
            auto_healing_policies={
                "health_check": self.health_check.id,
                "initial_delay_sec": STARTUP_GRACE_S,
            },
            update_policy={
                "type": "PROACTIVE",
                "minimal_action": "REPLACE",
                "replacement_method": "SUBSTITUTE",
                "max_surge_fixed": spec.max_surge,
                "max_unavailable_fixed": 0,
            },
            # Report VM creation failures (GPU stock-outs, quota) in the apply instead of hiding them.
            wait_for_instances=True,
            wait_for_instances_status="STABLE",
            timeouts={"create": WAIT_TIMEOUT, "update": WAIT_TIMEOUT, "delete": "20m"},
            lifecycle=TerraformResourceLifecycle(ignore_changes=RELEASE_OWNED),
        )
        self.image_metadata_key = IMAGE_KEY
        self.ready_check_id = self.ready_check.id
        self.instance_group = self.group.instance_group

        self.autoscaler = None
        if scaled:
            policy: dict = {"mode": "ON", "cooldown_period": STARTUP_GRACE_S}
            if autoscaling:
                policy |= {
                    "min_replicas": autoscaling.min_replicas,
                    "max_replicas": autoscaling.max_replicas,
                    "load_balancing_utilization": {"target": autoscaling.target_utilization},
                }
            else:
                # Schedules need another signal; without a load balancer, CPU, capped at the schedule's size.
                policy |= {
                    "min_replicas": 0,
                    "max_replicas": schedule.size,
                    "cpu_utilization": {"target": SCHEDULE_CPU_TARGET},
                }
            if schedule:
                policy["scaling_schedules"] = [
                    ComputeRegionAutoscalerAutoscalingPolicyScalingSchedules(
                        name="working-hours",
                        description="the GPU group's working hours (envs/*.yaml gpu.schedule)",
                        schedule=schedule.start,
                        duration_sec=schedule.duration_s,
                        time_zone=schedule.time_zone,
                        min_required_replicas=schedule.size,
                    )
                ]
            self.autoscaler = ComputeRegionAutoscaler(
                self,
                "autoscaler",
                project=project,
                region=region,
                name=name,
                target=self.group.id,
                autoscaling_policy=policy,
            )
