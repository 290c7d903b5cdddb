"""One environment's settings (`envs/<env>.yaml`), validated into one typed, frozen `EnvConfig`.

Every value that differs between dev and prod lives in the env file; facts that are the same everywhere
(pinned image versions, probe paths, port numbers) live in the module that uses them. The sections are the
constructs' typed inputs (`modules/inputs.py`) or extend them with what only the stack reads. Unknown keys are
errors, so a typo fails here instead of silently falling back to a default. Secrets never live in an env
file: the env file declares the Secret Manager secrets (`secrets:`, id -> what it holds; the stack creates
them without values, scripts/bootstrap.sh adds the values), `service.secret_env` / `gpu.secret_env` mount
declared secrets as env vars, and env values that look like credentials are rejected.

`phase` says how far the env's bootstrap has come (scripts/bootstrap.sh moves it forward; each phase is a
superset of the one before): `foundation` (APIs, identities, secrets, Cloud Run on a placeholder image, the
GPU group held at 0), `released` (a first release exists: the GPU group takes its configured size),
`monitored` (the app's series exist in Managed Prometheus: alert policies, uptime check, Grafana).

This module imports neither cdktf nor the provider: loading and validating a file takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, StringConstraints, ValidationError, model_validator

from modules.inputs import (
    AlertPolicySettings,
    BudgetInput,
    CloudRunServiceInput,
    DataprepInput,
    Email,
    GitHubRepository,
    GpuGroupInput,
    GpuSchedule,
    GrafanaSettings,
    GrafanaSmtp,
    Input,
    LoadBalancerInput,
    LoadBalancerSettings,
    RegistryInput,
    ResourceName,
    SecretId,
)

__all__ = [  # GpuSchedule and GrafanaSmtp: the env file's sub-sections, re-exported for its readers
    "ENVS_DIR",
    "ROOT",
    "ConfigError",
    "EnvConfig",
    "GpuSchedule",
    "GrafanaSmtp",
    "load_env",
    "load_envs",
]

ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = ROOT / "envs"

# GCP naming rules, so that a bad name fails at synth time instead of halfway through an apply.
ProjectId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z]+-[a-z]+[0-9]+$")]
BucketName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{0,63}$")]
Phase = Literal["foundation", "released", "monitored"]
PHASES: tuple[str, ...] = ("foundation", "released", "monitored")

API_KEYS_ENV = "NANOCHAT_API_KEYS"  # the app's bearer keys (app/config.py), comma-separated


class ConfigError(ValueError):
    """An env file is missing, unreadable or invalid; the message names the file and every bad field."""


class StateConfig(Input):
    """The GCS bucket (created once by hand, see docs/infra.md) that holds this env's Terraform state."""

    bucket: BucketName
    prefix: str = Field(min_length=1)


class ServiceConfig(CloudRunServiceInput):
    """The CPU Cloud Run service (`modules.cloud_run_service`), its name and the release gate's key."""

    name: ResourceName = "nanochat"
    # The secret whose first key the release gate sends (it must be the one mounted as NANOCHAT_API_KEYS);
    # None: the service takes no API keys.
    api_keys_secret: SecretId | None = None

    @model_validator(mode="after")
    def _check_api_keys(self) -> ServiceConfig:
        mounted = self.secret_env.get(API_KEYS_ENV)
        if self.api_keys_secret and mounted != self.api_keys_secret:
            raise ValueError(
                f"api_keys_secret {self.api_keys_secret} must be the secret mounted as {API_KEYS_ENV} "
                f"(secret_env.{API_KEYS_ENV} is {mounted})"
            )
        if mounted and not self.api_keys_secret:
            raise ValueError(
                f"secret_env.{API_KEYS_ENV} is set: name the same secret as api_keys_secret, or the release "
                "gate cannot call the service"
            )
        return self


class GpuConfig(GpuGroupInput, LoadBalancerSettings):
    """The GPU managed instance group (`modules.gpu_inference_group`) behind an HTTP load balancer
    (`modules.http_load_balancer`)."""

    enabled: bool = True
    # The GPU build of the app, in this env's registry. No tag here: releases set the digest (the group's
    # all-instances metadata `nanochat-image`), as they set the Cloud Run image.
    image_name: ResourceName = "nanochat-gpu"
    load_balancer: bool = True
    insecure_http: bool = False  # plain HTTP on port 80: bearer keys in clear text; dev only

    @model_validator(mode="after")
    def _check_load_balancer(self) -> GpuConfig:
        if self.autoscaling and not self.load_balancer:
            raise ValueError("autoscaling scales on load-balancer utilization: it needs load_balancer: true")
        if self.load_balancer and not (self.domain or self.insecure_http):
            raise ValueError(
                "load_balancer: set domain (HTTPS with a managed certificate) or, for a test env only, "
                "insecure_http: true (bearer keys would cross the internet in clear text)"
            )
        if self.domain and self.insecure_http:
            raise ValueError("domain and insecure_http: a domain serves HTTPS; drop insecure_http")
        return self

    def load_balancer_input(self, request_timeout_s: int) -> LoadBalancerInput:
        """The load balancer's input: these settings, and the service's request timeout."""
        settings = self.model_dump(include=set(LoadBalancerSettings.model_fields))
        return LoadBalancerInput(**settings, request_timeout_s=request_timeout_s)


class MonitoringConfig(AlertPolicySettings):
    alert_emails: list[Email] = Field(min_length=1, max_length=5)  # a budget takes at most 5 channels
    alert_rules_dir: str = "alerts"  # Prometheus rule files (*.rules.yaml), relative to the repository


class GrafanaConfig(GrafanaSettings):
    enabled: bool = True
    dashboards_dir: str = "dashboards"  # Grafana dashboard JSON files, relative to the repository


class BudgetConfig(BudgetInput):
    # The budget publishes to Pub/Sub, and at 100 % a function scales the GPU group to 0 and caps Cloud
    # Run at one instance (infra/kill_switch/). Opt-in: it stops the service to stop the spending.
    kill_switch: bool = False


class DataprepConfig(DataprepInput):
    """The Spark data preparation on Dataproc Serverless (`modules.dataprep`, scripts/dataprep.sh): its
    bucket, service account and subnet. Off by default: nothing is created."""

    enabled: bool = False


class EnvConfig(Input):
    """Everything one stack needs; `name` comes from the file name (envs/dev.yaml -> dev)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]{0,9}$")]
    project: ProjectId
    region: Region
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    slo_file: str = "loadtest/slo.yaml"  # the SLO thresholds the alert rules are built from (reference)
    phase: Phase = "foundation"  # how far the bootstrap has come; scripts/bootstrap.sh moves it forward
    # Secret Manager secrets the stack declares: id -> what it holds
    secrets: dict[SecretId, str] = Field(default_factory=dict)
    state: StateConfig
    github: GitHubRepository
    registry: RegistryInput = RegistryInput()
    service: ServiceConfig
    gpu: GpuConfig
    monitoring: MonitoringConfig
    grafana: GrafanaConfig = GrafanaConfig()
    budget: BudgetConfig
    dataprep: DataprepConfig = DataprepConfig()

    @model_validator(mode="after")
    def _check(self) -> EnvConfig:
        if self.gpu.enabled and not self.gpu.zones[0].startswith(self.region + "-"):
            raise ValueError(f"gpu.zones must be in region {self.region}, got {self.gpu.zones}")
        if self.monitoring.uptime_check_period_s and self.service.ingress != "all":
            raise ValueError("monitoring.uptime_check_period_s: uptime checks need service.ingress: all")
        reserved = {"env", "app", "managed-by"} & set(self.labels)
        if reserved:
            raise ValueError(f"labels may not set {', '.join(sorted(reserved))}: the stack sets them")
        paths = {"slo_file": self.slo_file, "monitoring.alert_rules_dir": self.monitoring.alert_rules_dir}
        if self.grafana.enabled:
            paths["grafana.dashboards_dir"] = self.grafana.dashboards_dir
        for field, value in paths.items():
            if not (ROOT / value).exists():
                raise ValueError(f"{field}: {value} does not exist in the repository")
        mounted = {
            **{f"service.secret_env.{k}": v for k, v in self.service.secret_env.items()},
            **{f"gpu.secret_env.{k}": v for k, v in self.gpu.secret_env.items()},
        }
        if self.grafana.smtp:
            mounted["grafana.smtp.password_secret"] = self.grafana.smtp.password_secret
        undeclared = [f"{field}: {secret}" for field, secret in mounted.items() if secret not in self.secrets]
        if undeclared:
            raise ValueError(f"secrets not declared under `secrets:`: {'; '.join(undeclared)}")
        return self

    @property
    def released(self) -> bool:
        """A first release exists: the GPU group may run (it has an image digest to run)."""
        return PHASES.index(self.phase) >= PHASES.index("released")

    @property
    def monitored(self) -> bool:
        """The app's series exist in Managed Prometheus: alert policies, uptime check and Grafana."""
        return self.phase == "monitored"

    @property
    def common_labels(self) -> dict[str, str]:
        """The labels every labelled resource carries."""
        return {"env": self.name, "app": "nanochat", "managed-by": "cdktf", **self.labels}


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_env(path: str | Path) -> EnvConfig:
    """Read and validate one env file; raise ConfigError naming the file and each bad field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if "name" in data:
        raise ConfigError(f"{path}: name: the env's name is its file name ({path.stem}); remove the key")
    try:
        return EnvConfig.model_validate({"name": path.stem, **data})
    except ValidationError as exc:
        problems = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def load_envs(envs_dir: str | Path = ENVS_DIR) -> list[EnvConfig]:
    """Every env file in the folder, sorted by name; at least one must exist."""
    files = sorted(Path(envs_dir).glob("*.yaml"))
    if not files:
        raise ConfigError(f"{envs_dir}: no env files (*.yaml)")
    configs = [load_env(f) for f in files]
    projects = [c.project for c in configs]
    shared = sorted({p for p in projects if projects.count(p) > 1})
    if shared:
        raise ConfigError(f"{envs_dir}: each env needs its own project; shared: {', '.join(shared)}")
    return configs
