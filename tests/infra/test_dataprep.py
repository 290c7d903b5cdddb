"""modules/dataprep.py in the stack: off in the committed env files (nothing created), and on in a variant of
dev: the bucket, the batches' service account with exactly its two roles, the subnet, the Dataproc API,
the outputs, the project's policies and checkov. Both stacks are synthesized once, in one app."""

from __future__ import annotations

import json

import pytest

from infra import names
from infra.checks import SKIPS_FILE, checkov_failures, find_checkov, load_skips, policy_violations
from infra.config import load_envs

pytestmark = pytest.mark.slow  # the provider import and synth take 10-30 s (shared with the other tests)


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    from infra.main import build_app

    dev = next(cfg for cfg in load_envs() if cfg.name == "dev")
    enabled = dev.model_copy(
        update={"name": "devdata", "dataprep": dev.dataprep.model_copy(update={"enabled": True})}
    )
    outdir = tmp_path_factory.mktemp("dataprep") / "cdktf.out"
    build_app([dev, enabled], outdir=str(outdir)).synth()
    result = {}
    for cfg in (dev, enabled):
        folder = outdir / "stacks" / cfg.name
        result[cfg.name] = (cfg, folder, json.loads((folder / "cdk.tf.json").read_text()))
    return result


def resources_of(stack: dict, resource_type: str) -> list[dict]:
    return list(stack["resource"].get(resource_type, {}).values())


def test_off_by_default_nothing_is_created():
    assert all(not cfg.dataprep.enabled for cfg in load_envs())


def test_off_the_stack_holds_no_dataprep_resource(synthesized):
    cfg, _, stack = synthesized["dev"]
    text = json.dumps(stack["resource"])
    assert names.dataprep_bucket(cfg) not in text and names.dataprep_account_id(cfg) not in text
    assert "dataproc" not in text
    assert stack["output"]["dataprep_bucket"]["value"] == ""


def test_on_the_bucket_account_and_subnet_a_batch_needs(synthesized):
    cfg, _, stack = synthesized["devdata"]
    (bucket,) = [
        b for b in resources_of(stack, "google_storage_bucket") if b["name"] == names.dataprep_bucket(cfg)
    ]
    assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True} and bucket["labels"]["env"] == "devdata"
    assert bucket["location"] == cfg.region.upper()

    (account,) = [
        a
        for a in resources_of(stack, "google_service_account")
        if a["account_id"] == names.dataprep_account_id(cfg)
    ]
    account_ref = [
        key for key, body in stack["resource"]["google_service_account"].items() if body is account
    ]
    member = f"serviceAccount:${{google_service_account.{account_ref[0]}.email}}"
    project_roles = {
        m["role"] for m in resources_of(stack, "google_project_iam_member") if m["member"] == member
    }
    assert project_roles == {"roles/dataproc.worker"}
    bucket_roles = [
        m for m in resources_of(stack, "google_storage_bucket_iam_member") if m["member"] == member
    ]
    assert [m["role"] for m in bucket_roles] == ["roles/storage.objectAdmin"]
    assert "dataprep_bucket_" in bucket_roles[0]["bucket"]  # its own bucket, no other

    (subnet,) = [
        s
        for s in resources_of(stack, "google_compute_subnetwork")
        if s["name"] == names.dataprep_network(cfg)
    ]
    assert subnet["private_ip_google_access"] is True and subnet["ip_cidr_range"] == cfg.dataprep.subnet_cidr
    (rule,) = [f for f in resources_of(stack, "google_compute_firewall") if "dataprep" in f["name"]]
    assert rule["source_ranges"] == rule["destination_ranges"] == [cfg.dataprep.subnet_cidr]
    assert rule["direction"] == "INGRESS" and rule["allow"] == [{"protocol": "all"}]

    apis = {s["service"] for s in resources_of(stack, "google_project_service")}
    assert "dataproc.googleapis.com" in apis
    outputs = stack["output"]
    assert {"dataprep_bucket", "dataprep_service_account", "dataprep_subnet"} <= set(outputs)
    assert outputs["dataprep_service_account"]["value"].endswith(".email}")


def test_on_the_stack_breaks_no_policy(synthesized):
    cfg, _, stack = synthesized["devdata"]
    assert policy_violations(stack, cfg) == []


@pytest.mark.integration
def test_on_checkov_finds_nothing_beyond_the_listed_skips(synthesized):
    checkov = find_checkov()
    if not checkov:
        pytest.skip(
            "checkov not installed: `make infra-check` installs it in .venv-infra (CI: run that first)"
        )
    _, folder, _ = synthesized["devdata"]
    failures = {check for check, _ in checkov_failures(checkov, folder)}
    assert failures <= set(load_skips(SKIPS_FILE)), failures - set(load_skips(SKIPS_FILE))
