"""One environment's settings (`envs/<env>.yaml`), validated into one typed, frozen `EnvConfig`.

Every value that differs between dev and prod lives in the env file; facts that are the same everywhere
(pinned image versions, probe paths, port numbers) live in the module that uses them. Unknown keys are
errors, so a typo fails here instead of silently falling back to a default. Secrets never live in an env
file: `service.secret_env` names Secret Manager secrets, and env values that look like credentials are
rejected.

This module imports neither cdktf nor the provider: loading and validating a file takes milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = ROOT / "envs"

# GCP naming rules, so that a bad name fails at synth time instead of halfway through an apply.
ProjectId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z]+-[a-z]+[0-9]+$")]
Zone = Annotated[str, StringConstraints(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]
ResourceName = Annotated[str, StringConstraints(pattern=r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$")]
BucketName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{0,63}$")]
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Member = Annotated[str, StringConstraints(pattern=r"^(user|group|serviceAccount|domain):[^\s]+$")]
Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]+(Mi|Gi)$")]
EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]

# Env var names that carry credentials; their values belong in Secret Manager (service.secret_env).
SECRET_NAME = re.compile(r"(^|_)(KEYS?|SECRETS?|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)(_|$)")


class ConfigError(ValueError):
    """An env file is missing, unreadable or invalid; the message names the file and every bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_env(env: dict[str, str]) -> None:
    """Env vars for a container: no credentials, and one line each (they become an env file)."""
    multiline = sorted(name for name, value in env.items() if "\n" in value)
    if multiline:
        raise ValueError(f"{', '.join(multiline)}: values must be one line")
    leaked = sorted(name for name in env if SECRET_NAME.search(name))
    if leaked:
        raise ValueError(
            f"{', '.join(leaked)} look like secrets; env files are committed, so put the value in Secret "
            "Manager and name the secret under secret_env instead"
        )


class StateConfig(_Section):
    """The GCS bucket (created once by hand, see docs/infra.md) that holds this env's Terraform state."""

    bucket: BucketName
    prefix: str = Field(min_length=1)


class GitHubConfig(_Section):
    """The repository whose workflows may deploy (workload identity) and whose pushes trigger builds."""

    owner: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")]
    repo: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,100}$")]
    deploy_branch: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,255}$")] = "main"
    # the GitHub environment of the deploy job (`environment:` changes the token's `sub` claim);
    # None: the env's own name (dev, prod), as .github/workflows/deploy.yml uses them
    environment: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,255}$")] | None = None


class RegistryConfig(_Section):
    repository: ResourceName = "nanochat"
    keep_recent_versions: int = Field(10, ge=1)  # never deleted, however old
    delete_older_than_days: int = Field(30, ge=1)  # other versions are deleted past this age


class ServiceConfig(_Section):
    """The CPU Cloud Run service. Releases own its image and traffic; `initial_image` is only the first."""

    name: ResourceName = "nanochat"
    initial_image: str = Field(min_length=1)
    cpu: Literal["1", "2", "4", "8"] = "2"
    memory: Quantity = "4Gi"
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(3, ge=1)
    concurrency: int = Field(32, ge=1, le=1000)
    request_timeout_s: int = Field(300, ge=1, le=3600)
    ingress: Literal["all", "internal", "internal-and-cloud-load-balancing"] = "all"
    public: bool = False  # grant allUsers the invoker role; otherwise callers need IAM
    invokers: list[Member] = []  # who may call a private service (besides the deployer, for the gate)
    deletion_protection: bool = True
    env: dict[EnvVarName, str] = {}
    secret_env: dict[EnvVarName, ResourceName] = {}  # env var -> Secret Manager secret id (made by hand)

    @model_validator(mode="after")
    def _check(self) -> ServiceConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) exceeds max_instances ({self.max_instances})"
            )
        _check_env(self.env)
        overlap = set(self.env) & set(self.secret_env)
        if overlap:
            raise ValueError(f"{', '.join(sorted(overlap))} set in both env and secret_env")
        return self


class AutoscalingConfig(_Section):
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    target_utilization: float = Field(0.8, gt=0, le=1)  # of max_rate_per_instance, across the group

    @model_validator(mode="after")
    def _check(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class GpuConfig(_Section):
    """The GPU managed instance group (one L4 per VM) behind an HTTP load balancer."""

    enabled: bool = True
    machine_type: Annotated[str, StringConstraints(pattern=r"^g2-standard-[0-9]+$")] = "g2-standard-8"
    accelerator_type: Literal["nvidia-l4"] = "nvidia-l4"
    accelerator_count: int = Field(1, ge=1, le=8)
    zones: list[Zone] = Field(min_length=1)
    image_project: str = "deeplearning-platform-release"
    image_family: str = Field(min_length=1)  # a Deep Learning VM family with the NVIDIA driver
    disk_size_gb: int = Field(100, ge=50)
    image_name: ResourceName = "nanochat-gpu"  # the GPU build of the app, in this env's registry
    image_tag: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
    target_size: int = Field(0, ge=0)  # used without autoscaling; 0 = an idle group costs nothing
    autoscaling: AutoscalingConfig | None = None
    max_surge: int = Field(1, ge=1)
    spot: bool = False
    load_balancer: bool = True
    max_rate_per_instance: float = Field(10.0, gt=0)  # requests/s one VM serves within the SLOs
    env: dict[EnvVarName, str] = {}
    secret_env: dict[EnvVarName, ResourceName] = {}  # env var -> Secret Manager secret id (made by hand)

    @model_validator(mode="after")
    def _check(self) -> GpuConfig:
        region_of = {zone.rsplit("-", 1)[0] for zone in self.zones}
        if len(region_of) != 1:
            raise ValueError(f"zones must be in one region, got {sorted(region_of)}")
        # GCE rule for regional groups: a fixed surge is 0 or at least the number of zones.
        if self.max_surge < len(self.zones):
            raise ValueError(
                f"max_surge ({self.max_surge}) must be at least the number of zones ({len(self.zones)}) "
                "for a regional instance group"
            )
        _check_env(self.env)
        if self.autoscaling and not self.load_balancer:
            raise ValueError("autoscaling scales on load-balancer utilization: it needs load_balancer: true")
        return self


class MonitoringConfig(_Section):
    alert_emails: list[Email] = Field(min_length=1, max_length=5)  # a budget takes at most 5 channels
    alert_rules_dir: str = "alerts"  # Prometheus rule files (*.rules.yaml), relative to the repository
    evaluation_interval_s: int = Field(30, ge=30, multiple_of=30)  # for groups without an interval
    uptime_check_period_s: Literal[60, 300, 600, 900] | None = None  # None: no uptime check


class GrafanaConfig(_Section):
    enabled: bool = True
    viewers: list[Member] = []  # who may open Grafana (Cloud Run invoker); never allUsers
    dashboards_dir: str = "dashboards"  # Grafana dashboard JSON files, relative to the repository


class BudgetConfig(_Section):
    billing_account: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$")]
    amount: int = Field(gt=0)  # whole currency units per month
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    actual_thresholds: list[float] = Field([0.5, 0.9, 1.0], min_length=1)
    forecast_thresholds: list[float] = [1.0]

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        for name in ("actual_thresholds", "forecast_thresholds"):
            values = getattr(self, name)
            if any(v <= 0 for v in values) or values != sorted(set(values)):
                raise ValueError(f"{name} must be positive, increasing and distinct, got {values}")
        return self


class EnvConfig(_Section):
    """Everything one stack needs; `name` comes from the file name (envs/dev.yaml -> dev)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]{0,9}$")]
    project: ProjectId
    region: Region
    labels: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")], LabelValue] = {}
    slo_file: str = "loadtest/slo.yaml"  # the SLO thresholds the alert rules are built from (reference)
    state: StateConfig
    github: GitHubConfig
    registry: RegistryConfig = RegistryConfig()
    service: ServiceConfig
    gpu: GpuConfig
    monitoring: MonitoringConfig
    grafana: GrafanaConfig = GrafanaConfig()
    budget: BudgetConfig

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
        return self

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
