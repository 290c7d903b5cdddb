"""A global external Application Load Balancer (HTTP) in front of the GPU instance group.

Requests are balanced by rate: each VM takes up to `max_rate_per_instance` requests/s, which is also the
capacity the autoscaler's load-balancing utilization is measured against. Requests are logged. A GPU
service meant for the internet needs HTTPS (a domain and a managed certificate) or IAP in front; this
serves plain HTTP on a static address and relies on the app's API keys (`NANOCHAT_API_KEYS`).
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.compute_backend_service import (
    ComputeBackendService,
    ComputeBackendServiceBackend,
)
from cdktf_cdktf_provider_google.compute_global_address import ComputeGlobalAddress
from cdktf_cdktf_provider_google.compute_global_forwarding_rule import ComputeGlobalForwardingRule
from cdktf_cdktf_provider_google.compute_target_http_proxy import ComputeTargetHttpProxy
from cdktf_cdktf_provider_google.compute_url_map import ComputeUrlMap
from constructs import Construct

from modules.gpu_inference_group import PORT_NAME, GpuInferenceGroup


class HttpLoadBalancer(Construct):
    """`address` (a static IPv4) port 80 -> backend service -> the group's named port `http`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        env: str,
        group: GpuInferenceGroup,
        max_rate_per_instance: float,
        request_timeout_s: int,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        name = f"nanochat-gpu-{env}"
        self.address = ComputeGlobalAddress(
            self, "address", project=project, name=name, ip_version="IPV4", labels=dict(labels)
        )
        backend = ComputeBackendService(
            self,
            "backend",
            project=project,
            name=name,
            protocol="HTTP",
            port_name=PORT_NAME,
            load_balancing_scheme="EXTERNAL_MANAGED",
            timeout_sec=request_timeout_s,
            connection_draining_timeout_sec=30,
            health_checks=[group.health_check.id],
            backend=[
                ComputeBackendServiceBackend(
                    group=group.group.instance_group,
                    balancing_mode="RATE",
                    max_rate_per_instance=max_rate_per_instance,
                    capacity_scaler=1.0,
                )
            ],
            log_config={"enable": True, "sample_rate": 1.0},
        )
        url_map = ComputeUrlMap(self, "url-map", project=project, name=name, default_service=backend.id)
        proxy = ComputeTargetHttpProxy(self, "proxy", project=project, name=name, url_map=url_map.id)
        self.forwarding_rule = ComputeGlobalForwardingRule(
            self,
            "forwarding-rule",
            project=project,
            name=name,
            target=proxy.id,
            ip_address=self.address.id,
            ip_protocol="TCP",
            port_range="80",
            load_balancing_scheme="EXTERNAL_MANAGED",
            labels=dict(labels),
        )
