"""A global external Application Load Balancer in front of the GPU instance group, behind Cloud Armor.

- TLS: with a `domain`, HTTPS on 443 with a Google-managed certificate (it turns ACTIVE once the domain's
  A record points at `address`) and a modern TLS policy; port 80 only redirects to HTTPS. Without a domain
  it serves plain HTTP on port 80, which the config allows only with an explicit `insecure_http: true`
  (bearer keys would cross the internet in clear text).
- Traffic goes only to VMs whose model is loaded: the backend's health check is the group's READY_PATH
  check (autohealing uses HEALTH_PATH, a separate check).
- Cloud Armor: a security policy on the backend throttles each client IP to `rate_limit_per_minute`
  requests (429 above it); everything else is allowed (the app checks API keys).
- Requests are balanced by rate: each VM takes up to `max_rate_per_instance` requests/s, which is also the
  capacity the autoscaler's load-balancing utilization is measured against. Requests are logged.

Input: `LoadBalancerInput` (domain, rate limit, rate per VM, request timeout), the name, the instance
group's and its readiness check's ids. Outputs: `address`, `url`, `forwarding_rule`.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.compute_backend_service import (
    ComputeBackendService,
    ComputeBackendServiceBackend,
)
from cdktf_cdktf_provider_google.compute_global_address import ComputeGlobalAddress
from cdktf_cdktf_provider_google.compute_global_forwarding_rule import ComputeGlobalForwardingRule
from cdktf_cdktf_provider_google.compute_managed_ssl_certificate import ComputeManagedSslCertificate
from cdktf_cdktf_provider_google.compute_security_policy import (
    ComputeSecurityPolicy,
    ComputeSecurityPolicyRule,
)
from cdktf_cdktf_provider_google.compute_ssl_policy import ComputeSslPolicy
from cdktf_cdktf_provider_google.compute_target_http_proxy import ComputeTargetHttpProxy
from cdktf_cdktf_provider_google.compute_target_https_proxy import ComputeTargetHttpsProxy
from cdktf_cdktf_provider_google.compute_url_map import ComputeUrlMap
from constructs import Construct

from modules.gpu_inference_group import PORT_NAME
from modules.inputs import LoadBalancerInput

DEFAULT_RULE_PRIORITY = 2147483647  # Cloud Armor's default rule, evaluated last


def _armor_rules(rate_limit_per_minute: int) -> list[ComputeSecurityPolicyRule]:
    every_ip = {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["*"]}}
    return [
        ComputeSecurityPolicyRule(
            priority=1000,
            action="throttle",
            description=f"each client IP: at most {rate_limit_per_minute} requests a minute, 429 above",
            match=every_ip,
            rate_limit_options={
                "conform_action": "allow",
                "exceed_action": "deny(429)",
                "enforce_on_key": "IP",
                "rate_limit_threshold": {"count": rate_limit_per_minute, "interval_sec": 60},
            },
        ),
        ComputeSecurityPolicyRule(
            priority=DEFAULT_RULE_PRIORITY, action="allow", description="default: allow", match=every_ip
        ),
    ]


class HttpLoadBalancer(Construct):
    """`address` (a static IPv4) -> Cloud Armor -> backend service -> the group's named port `http`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: LoadBalancerInput,
        *,
        project: str,
        name: str,
        instance_group: str,
        health_check: str,
        labels: Mapping[str, str],
    ) -> None:
        """`instance_group`: the managed group's instance group (URL); `health_check`: the id of the check
        that says a VM takes traffic."""
        super().__init__(scope, id_)
        domain = spec.domain
        self.address = ComputeGlobalAddress(
            self, "address", project=project, name=name, ip_version="IPV4", labels=dict(labels)
        )
        self.security_policy = ComputeSecurityPolicy(
            self,
            "armor",
            project=project,
            name=f"{name}-armor",
            description="nanochat GPU endpoint: per-client-IP rate limit",
            type="CLOUD_ARMOR",
            rule=_armor_rules(spec.rate_limit_per_minute),
        )
        backend = ComputeBackendService(
            self,
            "backend",
            project=project,
            name=name,
            protocol="HTTP",
            port_name=PORT_NAME,
            load_balancing_scheme="EXTERNAL_MANAGED",
            timeout_sec=spec.request_timeout_s,
            connection_draining_timeout_sec=30,
            health_checks=[health_check],
            security_policy=self.security_policy.id,
            backend=[
                ComputeBackendServiceBackend(
                    group=instance_group,
                    balancing_mode="RATE",
                    max_rate_per_instance=spec.max_rate_per_instance,
                    capacity_scaler=1.0,
                )
            ],
            log_config={"enable": True, "sample_rate": 1.0},
        )
        url_map = ComputeUrlMap(self, "url-map", project=project, name=name, default_service=backend.id)

        def forward(rule_id: str, target: str, port: int) -> ComputeGlobalForwardingRule:
            return ComputeGlobalForwardingRule(
                self,
                rule_id,
                project=project,
                name=f"{name}-{port}" if domain else name,
                target=target,
                ip_address=self.address.id,
                ip_protocol="TCP",
                port_range=str(port),
                load_balancing_scheme="EXTERNAL_MANAGED",
                labels=dict(labels),
            )

        self.url = f"https://{domain}" if domain else f"http://{self.address.address}"
        if not domain:
            proxy = ComputeTargetHttpProxy(self, "proxy", project=project, name=name, url_map=url_map.id)
            self.forwarding_rule = forward("forwarding-rule", proxy.id, 80)
            return

        certificate = ComputeManagedSslCertificate(
            self, "certificate", project=project, name=name, managed={"domains": [domain]}
        )
        tls_policy = ComputeSslPolicy(
            self, "tls-policy", project=project, name=name, profile="MODERN", min_tls_version="TLS_1_2"
        )
        https_proxy = ComputeTargetHttpsProxy(
            self,
            "https-proxy",
            project=project,
            name=name,
            url_map=url_map.id,
            ssl_certificates=[certificate.id],
            ssl_policy=tls_policy.id,
        )
        self.forwarding_rule = forward("https-forwarding-rule", https_proxy.id, 443)
        redirect = ComputeUrlMap(
            self,
            "redirect",
            project=project,
            name=f"{name}-redirect",
            default_url_redirect={
                "https_redirect": True,
                "strip_query": False,
                "redirect_response_code": "MOVED_PERMANENTLY_DEFAULT",
            },
        )
        http_proxy = ComputeTargetHttpProxy(
            self, "redirect-proxy", project=project, name=f"{name}-redirect", url_map=redirect.id
        )
        forward("redirect-forwarding-rule", http_proxy.id, 80)
