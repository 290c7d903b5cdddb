"""The GPU VMs' network: a private subnet (no public IPs), Cloud NAT for egress, health-check firewall.

VMs reach Google APIs (Artifact Registry, Secret Manager, Monitoring) through Private Google Access and
the internet (driver and Ops Agent packages) through Cloud NAT, which costs nothing while no VM runs.
The only ingress rule admits Google's health checkers and load-balancer proxies to the app port of the
GPU service account's VMs; everything else is denied by the VPC's implied rule.

Input: the project, region and env names. Outputs: `subnetwork_id` (for the VMs), `allow_health_checks`
(the firewall rule, given the VMs' service account email once it exists).
"""

from __future__ import annotations

from cdktf_cdktf_provider_google.compute_firewall import ComputeFirewall, ComputeFirewallAllow
from cdktf_cdktf_provider_google.compute_network import ComputeNetwork
from cdktf_cdktf_provider_google.compute_router import ComputeRouter
from cdktf_cdktf_provider_google.compute_router_nat import ComputeRouterNat
from cdktf_cdktf_provider_google.compute_subnetwork import ComputeSubnetwork
from constructs import Construct

from app.contract import APP_PORT

# Where Google health checks and global external Application Load Balancer proxies connect from.
HEALTH_CHECK_RANGES = ["130.211.0.0/22", "35.191.0.0/16"]


def vpc_with_subnet(
    scope: Construct, *, project: str, region: str, name: str, subnet: str, cidr: str
) -> tuple[ComputeNetwork, ComputeSubnetwork]:
    """A custom-mode VPC `name` (`vpc` in `scope`) with one regional subnet (`subnet`): Private Google Access
    on, flow logs every 10 minutes for half the flows, with their metadata."""
    network = ComputeNetwork(
        scope, "vpc", project=project, name=name, auto_create_subnetworks=False, routing_mode="REGIONAL"
    )
    subnetwork = ComputeSubnetwork(
        scope,
        "subnet",
        project=project,
        region=region,
        name=subnet,
        network=network.id,
        ip_cidr_range=cidr,
        private_ip_google_access=True,
        log_config={
            "aggregation_interval": "INTERVAL_10_MIN",
            "flow_sampling": 0.5,
            "metadata": "INCLUDE_ALL_METADATA",
        },
    )
    return network, subnetwork


class GpuNetwork(Construct):
    """VPC `nanochat-ENV` with one subnet in `region`; `allow_health_checks` opens the app port to the VMs of
    one service account."""

    def __init__(
        self, scope: Construct, id_: str, *, project: str, region: str, env: str, cidr: str = "10.20.0.0/24"
    ) -> None:
        super().__init__(scope, id_)
        self.project = project
        name = f"nanochat-{env}"
        self.network, self.subnetwork = vpc_with_subnet(
            self, project=project, region=region, name=name, subnet=f"{name}-gpu", cidr=cidr
        )
        self.subnetwork_id = self.subnetwork.id
        router = ComputeRouter(
            self, "router", project=project, region=region, name=name, network=self.network.id
        )
        ComputeRouterNat(
            self,
            "nat",
            project=project,
            region=region,
            name=name,
            router=router.name,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
        )

    def allow_health_checks(self, *, target_service_account: str) -> ComputeFirewall:
        """Health checkers and load-balancer proxies may reach APP_PORT on the VMs running as
        `target_service_account` (an email)."""
        return ComputeFirewall(
            self,
            "allow-health-checks",
            project=self.project,
            name=f"{self.network.name}-allow-health-checks",
            network=self.network.id,
            direction="INGRESS",
            source_ranges=HEALTH_CHECK_RANGES,
            target_service_accounts=[target_service_account],
            allow=[ComputeFirewallAllow(protocol="tcp", ports=[str(APP_PORT)])],
            log_config={"metadata": "INCLUDE_ALL_METADATA"},
        )
