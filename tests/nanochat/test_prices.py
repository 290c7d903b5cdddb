"""nanochat/prices.py is the one price table: docs/infra.md quotes exactly its numbers, and the Cloud Run
instance prices it states for dev and prod follow from the table and the env files' shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanochat.prices import (
    CLOUD_RUN_GIB_SECOND,
    CLOUD_RUN_VCPU_SECOND,
    MACHINE_PRICES,
    cloud_run_price_per_hour,
    dollars_per_million_tokens,
    machine_price_per_hour,
)
from nanochat.train.sweep import deployment_shapes

ROOT = Path(__file__).resolve().parents[2]
INFRA_DOC = (ROOT / "docs" / "infra.md").read_text()


def test_infra_doc_quotes_the_table():
    assert f"${CLOUD_RUN_VCPU_SECOND:.6f} per vCPU-second" in INFRA_DOC
    assert f"${CLOUD_RUN_GIB_SECOND:.6f} per GiB-second" in INFRA_DOC
    for machine, price in MACHINE_PRICES.items():
        assert f"`{machine}` with one L4\n${price.on_demand_per_hour}/hour on demand" in INFRA_DOC
        assert f"about ${price.spot_per_hour}/hour spot" in INFRA_DOC


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_instance_price_per_hour_in_the_doc_follows_from_table_and_env(env):
    shape = deployment_shapes(ROOT / "envs" / f"{env}.yaml")
    price = cloud_run_price_per_hour(shape["cloud_run_vcpu"], shape["cloud_run_gib"])
    assert f"${price:.4f}/hour in {env}" in INFRA_DOC
    assert shape["gpu_machine_type"] in MACHINE_PRICES  # the GPU group's machine has a price


def test_cost_per_million_tokens():
    assert dollars_per_million_tokens(3.6, 1000) == pytest.approx(1.0)  # $3.60/h at 1,000 tok/s
    with pytest.raises(ValueError, match="no price for machine type 'a2-highgpu-1g'"):
        machine_price_per_hour("a2-highgpu-1g")
    assert machine_price_per_hour("g2-standard-8", spot=True) < machine_price_per_hour("g2-standard-8")
