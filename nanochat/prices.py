"""List prices the cost figures use (us-central1), in one table: docs/infra.md "Cost per month" quotes the
same numbers and a test checks that it does (tests/nanochat/test_prices.py).

- Cloud Run, instance-based billing (Tier 1): per vCPU-second and per GiB-second, checked against
  https://cloud.google.com/run/pricing.
- Compute Engine machine types of the GPU group (envs/*.yaml `gpu.machine_type`), per hour with their GPU,
  on demand and spot (spot prices move: an estimate).

A price here is a floor for a cost per token: idle time and the service's own work cost more.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOUD_RUN_PRICES_URL = "https://cloud.google.com/run/pricing"
CLOUD_RUN_VCPU_SECOND = 0.000018
CLOUD_RUN_GIB_SECOND = 0.000002
# the collector sidecar beside the app on every Cloud Run instance (envs/*.yaml, docs/infra.md)
SIDECAR_VCPU, SIDECAR_GIB = 1, 0.5


@dataclass(frozen=True)
class MachinePrice:
    on_demand_per_hour: float
    spot_per_hour: float
    accelerator: str


MACHINE_PRICES = {
    "g2-standard-8": MachinePrice(on_demand_per_hour=0.8536, spot_per_hour=0.34, accelerator="nvidia-l4"),
}


def cloud_run_price_per_hour(app_vcpu: float, app_gib: float) -> float:
    """One Cloud Run instance: the app's vCPU and GiB plus the sidecar's, an hour."""
    vcpu, gib = app_vcpu + SIDECAR_VCPU, app_gib + SIDECAR_GIB
    return (vcpu * CLOUD_RUN_VCPU_SECOND + gib * CLOUD_RUN_GIB_SECOND) * 3600


def machine_price_per_hour(machine_type: str, spot: bool = False) -> float:
    """An hour of a Compute Engine machine type of the table (ValueError naming the known ones)."""
    if machine_type not in MACHINE_PRICES:
        raise ValueError(f"no price for machine type {machine_type!r}; known: {', '.join(MACHINE_PRICES)}")
    price = MACHINE_PRICES[machine_type]
    return price.spot_per_hour if spot else price.on_demand_per_hour


def dollars_per_million_tokens(price_per_hour: float, tokens_per_second: float) -> float:
    return price_per_hour / (tokens_per_second * 3600) * 1e6
