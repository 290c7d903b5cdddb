"""scripts/deploy.sh against the fake cloud: the release a deployer (not a project owner) can run, from
CI (workload identity: no identity token from gcloud) and by hand; one build of both images; the gate's
credentials; the GPU group's roll; `--promote-latest`, the step that makes an infra change go live."""

from __future__ import annotations

from tests.scripts.conftest import Cloud

DIGEST_PREFIX = "@sha256:"


def release(cloud: Cloud, *args: str, **env: str):
    return cloud.script("deploy.sh", "--env", "dev", "--tag", "abc123", *args, **env)


def serving(cloud: Cloud, service: str = "nanochat") -> str:
    traffic = cloud.state["run"][service]["traffic"]
    return next(e["revision"] for e in traffic if e["percent"] == 100)


def test_the_build_stages_its_sources_in_the_stack_bucket_so_no_bucket_list_is_needed(founded: Cloud):
    # the deployer may not list the project's buckets (storage.buckets.list): gcloud's default staging
    # bucket would need it, the stack's build bucket does not
    result = release(founded)
    assert result.returncode == 0, result.stderr
    [submit] = [c for c in founded.calls() if c[:2] == ["builds", "submit"]]
    staging = submit[submit.index("--gcs-source-staging-dir") + 1]
    assert staging == "gs://your-nanochat-dev-nanochat-build/source"
    account = submit[submit.index("--service-account") + 1]
    build_account = "nanochat-build-dev@your-nanochat-dev.iam.gserviceaccount.com"
    assert account == f"projects/your-nanochat-dev/serviceAccounts/{build_account}"


def test_one_build_makes_both_images_and_the_release_pins_both_by_digest(founded: Cloud):
    result = release(founded)
    assert result.returncode == 0, result.stderr
    [build] = founded.state["builds"]
    registry = "us-central1-docker.pkg.dev/your-nanochat-dev/nanochat"
    assert build["substitutions"] == {
        "_IMAGE": f"{registry}/nanochat",
        "_GPU_IMAGE": f"{registry}/nanochat-gpu",
        "COMMIT_SHA": "abc123",
    }
    revisions = founded.state["run"]["nanochat"]["revisions"]
    assert revisions[-1]["image"] == f"{registry}/nanochat{DIGEST_PREFIX}{1:064d}"
    assert serving(founded) == revisions[-1]["name"]
    group = founded.state["migs"]["nanochat-gpu-dev"]
    assert group["metadata"]["nanochat-image"] == f"{registry}/nanochat-gpu{DIGEST_PREFIX}{1:064d}"


def test_under_workload_identity_the_gate_uses_the_token_the_auth_step_minted(founded: Cloud):
    founded.state["credentials"] = "external_account"  # gcloud prints no identity token for these
    founded.state["can_list_buckets"] = True  # this finding alone, whatever the staging bucket
    result = release(founded, GITHUB_ACTIONS="true", LOADTEST_ID_TOKEN="minted-by-the-auth-action")
    assert result.returncode == 0, result.stderr
    assert ["auth", "print-identity-token"] not in founded.calls()
    [gate] = founded.state["gates"]
    assert gate["id_token"] == "minted-by-the-auth-action"


def test_in_ci_without_a_minted_token_the_release_stops_before_building(founded: Cloud):
    founded.state["credentials"] = "external_account"
    result = release(founded, GITHUB_ACTIONS="true")
    assert result.returncode == 1
    assert "LOADTEST_ID_TOKEN is not set" in result.stderr and "nanochat-dev-release-gate" in result.stderr
    assert founded.state["builds"] == [] and ["auth", "print-identity-token"] not in founded.calls()


def test_a_person_with_impersonated_credentials_is_told_how_to_get_a_token(founded: Cloud):
    founded.state["credentials"] = "impersonated"
    result = release(founded)
    assert result.returncode == 1
    assert (
        "No identity token can be obtained" in result.stderr
        and "--impersonate-service-account" in result.stderr
    )
    assert founded.state["builds"] == []


def test_a_person_with_user_credentials_gates_with_gcloud_identity_token(founded: Cloud):
    result = release(founded)
    assert result.returncode == 0, result.stderr
    [gate] = founded.state["gates"]
    assert gate["id_token"] == "user-identity-token" and gate["api_key"] == ""
    assert gate["argv"][:2] == ["--host", "https://candidate---nanochat-abc123-uc.a.run.app"]


def test_prod_gate_gets_the_first_key_of_the_api_keys_secret_and_never_prints_it(cloud: Cloud):
    cloud.apply("prod")
    cloud.state["secrets"]["nanochat-api-keys"] = ["first-key-4a1b, second-key-9c2d"]
    result = cloud.script("deploy.sh", "--env", "prod", "--tag", "abc123")
    assert result.returncode == 0, result.stderr
    [gate] = cloud.state["gates"]
    assert gate["api_key"] == "first-key-4a1b"
    assert "first-key" not in result.stdout + result.stderr
    dry = cloud.script("deploy.sh", "--env", "prod", "--dry-run")
    assert dry.returncode == 0 and "first-key" not in dry.stdout + dry.stderr


def test_every_release_mounts_the_env_secrets_so_a_first_release_has_its_keys(cloud: Cloud):
    """Terraform mounts secret env vars only from phase released (a secret without a version would stop
    the revision); the release mounts them itself, so the first one, in phase foundation, is keyed."""
    cloud.apply("prod")
    cloud.state["secrets"]["nanochat-api-keys"] = ["k1,k2"]
    assert cloud.script("deploy.sh", "--env", "prod", "--tag", "abc123").returncode == 0
    [deploy] = [c for c in cloud.calls() if c[:2] == ["run", "deploy"]]
    flag = deploy.index("--update-secrets")
    assert deploy[flag + 1] == "NANOCHAT_API_KEYS=nanochat-api-keys:latest"
    cloud.apply("dev")
    cloud.clear_calls()
    assert cloud.script("deploy.sh", "--env", "dev", "--tag", "abc123").returncode == 0
    assert not [c for c in cloud.calls() if "--update-secrets" in c]  # dev mounts no secret


def test_a_missing_api_keys_secret_version_fails_before_building(cloud: Cloud):
    cloud.apply("prod")
    result = cloud.script("deploy.sh", "--env", "prod")
    assert result.returncode == 1 and "nanochat-api-keys" in result.stderr
    assert cloud.state["builds"] == []


def test_a_failed_gate_untags_the_candidate_and_leaves_traffic_and_gpu_image_alone(founded: Cloud):
    before = serving(founded)
    founded.state["gate_status"] = 1
    result = release(founded)
    assert result.returncode == 1 and "rejected by the gate" in result.stderr
    assert serving(founded) == before
    assert not any(e.get("tag") == "candidate" for e in founded.state["run"]["nanochat"]["traffic"])
    assert founded.state["migs"]["nanochat-gpu-dev"]["metadata"] == {}


def test_the_gpu_roll_waits_for_a_group_with_vms_and_reports_its_errors(founded: Cloud):
    assert release(founded).returncode == 0
    assert not any(c[3:4] == ["wait-until"] for c in founded.calls())  # size 0: nothing to wait for
    founded.state["migs"]["nanochat-gpu-dev"] |= {
        "targetSize": 1,
        "errors": ["ZONE_RESOURCE_POOL_EXHAUSTED: us-central1-a does not have enough resources (nvidia-l4)"],
    }
    result = release(founded, "--tag", "def456")
    assert result.returncode == 1
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in result.stderr and "did not become stable" in result.stderr
    waits = [c for c in founded.calls() if c[3:4] == ["wait-until"]]
    assert waits and "--stable" in waits[0] and "1800" in waits[0]


def test_promote_latest_gates_and_promotes_a_revision_an_apply_made(founded: Cloud):
    assert release(founded).returncode == 0
    founded.state["apply_changes_template"] = True
    founded.state["gates"] = []
    founded.apply("dev")  # a changed template: a new revision with no traffic (releases own traffic)
    latest = founded.state["run"]["nanochat"]["revisions"][-1]["name"]
    assert serving(founded) != latest
    result = founded.script("deploy.sh", "--env", "dev", "--promote-latest")
    assert result.returncode == 0, result.stderr
    assert serving(founded) == latest and len(founded.state["gates"]) == 1
    assert founded.state["builds"] and len(founded.state["builds"]) == 1  # no new build
    again = founded.script("deploy.sh", "--env", "dev", "--promote-latest")
    assert again.returncode == 0 and "nothing to promote" in again.stderr
    assert len(founded.state["gates"]) == 1
