"""Every name the stack derives from an env's config, in one place: the modules, the stack and the scripts
(scripts/release_lib.sh reads them through Python) all call these, so a name is never spelled twice.

The names are deterministic, so a script can find a resource from the env file alone, without stack
outputs. Changing one renames (replaces) a live resource: keep them stable.

    python -m infra.names dev          # KEY=value lines of every name, for shell scripts

Pure Python, no cdktf: importing it takes milliseconds.
"""

from __future__ import annotations

import sys

from infra.config import ENVS_DIR, ConfigError, EnvConfig, load_env

WIF_POOL_ID = "github"
WIF_PROVIDER_ID = "github-actions"
GRAFANA_SERVICE = "grafana"


def sa_email(cfg: EnvConfig, account_id: str) -> str:
    return f"{account_id}@{cfg.project}.iam.gserviceaccount.com"


# Service accounts (account ids; `sa_email` makes the address).
def runtime_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-run-{cfg.name}"


def deployer_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-deploy-{cfg.name}"


def build_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-build-{cfg.name}"


def gpu_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-gpu-{cfg.name}"


def grafana_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-grafana-{cfg.name}"


def build_service_account(cfg: EnvConfig) -> str:
    """The build SA as `gcloud builds submit --service-account` and triggers take it."""
    return f"projects/{cfg.project}/serviceAccounts/{sa_email(cfg, build_account_id(cfg))}"


# Builds and images.
def build_source_bucket(cfg: EnvConfig) -> str:
    """Where builds stage their sources (never gcloud's default `PROJECT_cloudbuild`)."""
    return f"{cfg.project}-nanochat-build"


def build_staging_dir(cfg: EnvConfig) -> str:
    """`gcloud builds submit --gcs-source-staging-dir`."""
    return f"gs://{build_source_bucket(cfg)}/source"


def build_trigger(cfg: EnvConfig) -> str:
    return f"nanochat-{cfg.name}-main"


def registry_url(cfg: EnvConfig) -> str:
    return f"{cfg.region}-docker.pkg.dev/{cfg.project}/{cfg.registry.repository}"


def image_repo(cfg: EnvConfig) -> str:
    """The CPU image (Cloud Run), without tag or digest."""
    return f"{registry_url(cfg)}/{cfg.service.name}"


def gpu_image_repo(cfg: EnvConfig) -> str:
    """The GPU image (the MIG's VMs), without tag or digest."""
    return f"{registry_url(cfg)}/{cfg.gpu.image_name}"


# The Cloud Run service and its release gate.
def service_name(cfg: EnvConfig) -> str:
    return cfg.service.name


def collector_config_secret(cfg: EnvConfig) -> str:
    return f"{cfg.service.name}-collector-config"


def gate_audience(cfg: EnvConfig) -> str:
    """The custom audience of the release gate's ID token (the service accepts it on every URL)."""
    return f"nanochat-{cfg.name}-release-gate"


def api_keys_secret(cfg: EnvConfig) -> str | None:
    """The secret whose first key the release gate sends; None where the service needs no key."""
    return cfg.service.api_keys_secret


# GPU.
def gpu_group(cfg: EnvConfig) -> str:
    """The regional managed instance group (in `cfg.region`); also its template prefix and LB names."""
    return f"nanochat-gpu-{cfg.name}"


def gpu_health_check(cfg: EnvConfig) -> str:
    """Autohealing: the process answers (HEALTH_PATH)."""
    return f"{gpu_group(cfg)}-health"


def gpu_ready_check(cfg: EnvConfig) -> str:
    """Load balancing: the model is loaded (READY_PATH)."""
    return f"{gpu_group(cfg)}-ready"


def network(cfg: EnvConfig) -> str:
    return f"nanochat-{cfg.name}"


def security_policy(cfg: EnvConfig) -> str:
    return f"{gpu_group(cfg)}-armor"


# Identity federation, monitoring, budget.
def wif_provider(project_number: str | int) -> str:
    """The workload identity provider's resource name (needs the project number, not the id)."""
    return (
        f"projects/{project_number}/locations/global/workloadIdentityPools/{WIF_POOL_ID}"
        f"/providers/{WIF_PROVIDER_ID}"
    )


def grafana_service(cfg: EnvConfig) -> str:
    return GRAFANA_SERVICE


def grafana_bucket(cfg: EnvConfig) -> str:
    return f"{cfg.project}-nanochat-grafana"


def kill_switch_topic(cfg: EnvConfig) -> str:
    """The Pub/Sub topic the budget publishes to (the kill switch subscribes)."""
    return f"nanochat-budget-{cfg.name}"


def kill_switch_function(cfg: EnvConfig) -> str:
    return f"nanochat-kill-switch-{cfg.name}"


def kill_switch_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-kill-switch-{cfg.name}"


def kill_switch_bucket(cfg: EnvConfig) -> str:
    """The function's source archives."""
    return f"{cfg.project}-nanochat-kill-switch"


# The Spark data preparation (modules/dataprep.py, scripts/dataprep.sh).
def dataprep_bucket(cfg: EnvConfig) -> str:
    return f"{cfg.project}-nanochat-data"


def dataprep_account_id(cfg: EnvConfig) -> str:
    return f"nanochat-dataprep-{cfg.name}"


def dataprep_network(cfg: EnvConfig) -> str:
    """The VPC and its one subnet in `cfg.region`."""
    return f"nanochat-{cfg.name}-dataprep"


def all_names(cfg: EnvConfig) -> dict[str, str]:
    """Every name a script may need, keyed like the stack outputs where one exists."""
    return {
        "project": cfg.project,
        "region": cfg.region,
        "phase": cfg.phase,
        "service_name": service_name(cfg),
        "registry_url": registry_url(cfg),
        "image": image_repo(cfg),
        "gpu_image": gpu_image_repo(cfg),
        "gpu_enabled": "true" if cfg.gpu.enabled else "false",
        "gpu_group": gpu_group(cfg),
        "runtime_service_account": sa_email(cfg, runtime_account_id(cfg)),
        "deployer_service_account": sa_email(cfg, deployer_account_id(cfg)),
        "build_service_account": sa_email(cfg, build_account_id(cfg)),
        "build_source_bucket": build_source_bucket(cfg),
        "build_staging_dir": build_staging_dir(cfg),
        "build_on_push": "true" if cfg.github.build_on_push else "false",
        "gate_audience": gate_audience(cfg),
        "api_keys_secret": api_keys_secret(cfg) or "",
        "grafana_service": grafana_service(cfg),
        "kill_switch_topic": kill_switch_topic(cfg),
        "kill_switch": "true" if cfg.budget.kill_switch else "false",
        "dataprep_enabled": "true" if cfg.dataprep.enabled else "false",
        "dataprep_bucket": dataprep_bucket(cfg),
        "dataprep_service_account": sa_email(cfg, dataprep_account_id(cfg)),
        "dataprep_subnet": dataprep_network(cfg),
    }


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m infra.names ENV|PATH.yaml", file=sys.stderr)
        return 2
    path = args[0] if args[0].endswith(".yaml") else ENVS_DIR / f"{args[0]}.yaml"
    try:
        cfg = load_env(path)
    except ConfigError as exc:
        print(f"names: {exc}", file=sys.stderr)
        return 2
    for key, value in all_names(cfg).items():
        print(f"{key.upper()}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
