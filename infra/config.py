"""One environment's settings (`envs/<env>.yaml`), validated into one typed, frozen `EnvConfig`.

Every value that differs between dev and prod lives in the env file; facts that are the same everywhere
(pinned image versions, probe paths, port numbers) live in the module that uses them. Unknown keys are
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
SecretId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,255}$")]
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Member = Annotated[str, StringConstraints(pattern=r"^(user|group|serviceAccount|domain):[^\s]+$")]
Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]+(Mi|Gi)$")]
EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]
Domain = Annotated[str, StringConstraints(pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")]
# A cron schedule whose minute and hour are plain numbers (GPU working hours), e.g. "0 8 * * 1-5".
DailyCron = Annotated[
    str, StringConstraints(pattern=r"^([0-9]|[1-5][0-9]) ([0-9]|1[0-9]|2[0-3]) \S+ \S+ \S+$")
]
Phase = Literal["foundation", "released", "monitored"]
PHASES: tuple[str, ...] = ("foundation", "released", "monitored")

# Env var names that carry credentials; their values belong in Secret Manager (service.secret_env).
SECRET_NAME = re.compile(r"(^|_)(KEYS?|SECRETS?|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)(_|$)")
API_KEYS_ENV = "NANOCHAT_API_KEYS"  # the app's bearer keys (app/config.py), comma-separated


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
    # Numeric ids, pinned in the workload identity condition: a deleted and re-created owner or repository
    # of the same name gets new ids. `gh api repos/OWNER/REPO --jq '.owner.id, .id'` prints both.
    owner_id: int = Field(ge=1)
    repository_id: int = Field(ge=1)
    # A Cloud Build trigger that builds every push to deploy_branch. Off by default: the release
    # (.github/workflows/deploy.yml -> scripts/deploy.sh) builds once per merge; on, it would build twice.
    build_on_push: bool = False


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
    secret_env: dict[EnvVarName, SecretId] = {}  # env var -> a secret declared under `secrets:`
    # The secret whose first key the release gate sends (it must be the one mounted as NANOCHAT_API_KEYS);
    # None: the service takes no API keys.
    api_keys_secret: SecretId | None = None

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


class AutoscalingConfig(_Section):
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    target_utilization: float = Field(0.8, gt=0, le=1)  # of max_rate_per_instance, across the group

    @model_validator(mode="after")
    def _check(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class GpuSchedule(_Section):
    """Working hours for the GPU group: `size` VMs from `start` to `stop` (same days), 0 otherwise.

    Realized as an autoscaler scaling schedule: `start` is its cron schedule, the time to `stop` its
    duration. Both must name the same days; minute and hour are plain numbers.
    """

    start: DailyCron = "0 8 * * 1-5"
    stop: DailyCron = "0 19 * * 1-5"
    time_zone: str = Field("UTC", min_length=1)  # an IANA time zone, e.g. Europe/Berlin
    size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GpuSchedule:
        if self.start.split()[2:] != self.stop.split()[2:]:
            raise ValueError(f"start ({self.start}) and stop ({self.stop}) must name the same days")
        if self.duration_s <= 0:
            raise ValueError(f"stop ({self.stop}) must be later in the day than start ({self.start})")
        return self

    @property
    def duration_s(self) -> int:
        def minutes(cron: str) -> int:
            minute, hour = cron.split()[:2]
            return int(hour) * 60 + int(minute)

        return (minutes(self.stop) - minutes(self.start)) * 60


class GpuConfig(_Section):
    """The GPU managed instance group (one L4 per VM) behind an HTTP load balancer."""

    enabled: bool = True
    machine_type: Annotated[str, StringConstraints(pattern=r"^g2-standard-[0-9]+$")] = "g2-standard-8"
    accelerator_type: Literal["nvidia-l4"] = "nvidia-l4"
    accelerator_count: int = Field(1, ge=1, le=8)
    zones: list[Zone] = Field(min_length=1)
    image_project: str = "deeplearning-platform-release"
    # A Deep Learning VM family with the NVIDIA driver preinstalled, whose CUDA serves the image's
    # (Dockerfile's gpu target); families resolve only to images that are not deprecated.
    image_family: str = Field(min_length=1)
    disk_size_gb: int = Field(100, ge=50)
    # The GPU build of the app, in this env's registry. No tag here: releases set the digest (the group's
    # all-instances metadata `nanochat-image`), as they set the Cloud Run image.
    image_name: ResourceName = "nanochat-gpu"
    target_size: int = Field(0, ge=0)  # once released, without autoscaling; 0 = an idle group costs nothing
    autoscaling: AutoscalingConfig | None = None
    schedule: GpuSchedule | None = None  # working hours (autoscaler scaling schedule), 0 VMs otherwise
    max_surge: int = Field(1, ge=1)
    spot: bool = False
    load_balancer: bool = True
    # HTTPS on this domain with a Google-managed certificate (point its A record at the `gpu_address`
    # output); port 80 then only redirects. Without a domain the load balancer needs insecure_http: true.
    domain: Domain | None = None
    insecure_http: bool = False  # plain HTTP on port 80: bearer keys in clear text; dev only
    # Cloud Armor: a client IP over this many requests a minute is answered 429 until its rate drops.
    rate_limit_per_minute: int = Field(600, ge=10)
    max_rate_per_instance: float = Field(10.0, gt=0)  # requests/s one VM serves within the SLOs
    env: dict[EnvVarName, str] = {}
    secret_env: dict[EnvVarName, SecretId] = {}  # env var -> a secret declared under `secrets:`

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
        if self.load_balancer and not (self.domain or self.insecure_http):
            raise ValueError(
                "load_balancer: set domain (HTTPS with a managed certificate) or, for a test env only, "
                "insecure_http: true (bearer keys would cross the internet in clear text)"
            )
        if self.domain and self.insecure_http:
            raise ValueError("domain and insecure_http: a domain serves HTTPS; drop insecure_http")
        if self.schedule and self.autoscaling and self.schedule.size > self.autoscaling.max_replicas:
            raise ValueError(
                f"schedule.size ({self.schedule.size}) exceeds autoscaling.max_replicas "
                f"({self.autoscaling.max_replicas})"
            )
        return self


class MonitoringConfig(_Section):
    alert_emails: list[Email] = Field(min_length=1, max_length=5)  # a budget takes at most 5 channels
    alert_rules_dir: str = "alerts"  # Prometheus rule files (*.rules.yaml), relative to the repository
    evaluation_interval_s: int = Field(30, ge=30, multiple_of=30)  # for groups without an interval
    uptime_check_period_s: Literal[60, 300, 600, 900] | None = None  # None: no uptime check


class GrafanaSmtp(_Section):
    """The SMTP relay Grafana's email contact point sends through (Cloud Run blocks port 25)."""

    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")]  # smtp.example.com:587
    user: str = Field(min_length=1)
    from_address: Email
    password_secret: SecretId  # a secret declared under `secrets:`


class GrafanaConfig(_Section):
    enabled: bool = True
    smtp: GrafanaSmtp | None = None  # None: Grafana's alert rules have no email contact point
    viewers: list[Member] = []  # who may open Grafana (Cloud Run invoker); never allUsers
    dashboards_dir: str = "dashboards"  # Grafana dashboard JSON files, relative to the repository


class BudgetConfig(_Section):
    billing_account: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$")]
    amount: int = Field(gt=0)  # whole currency units per month
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    actual_thresholds: list[float] = Field([0.5, 0.9, 1.0], min_length=1)
    forecast_thresholds: list[float] = [1.0]
    # The budget publishes to Pub/Sub, and at 100 % a function scales the GPU group to 0 and caps Cloud
    # Run at one instance (infra/kill_switch/). Opt-in: it stops the service to stop the spending.
    kill_switch: bool = False

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
    phase: Phase = "foundation"  # how far the bootstrap has come; scripts/bootstrap.sh moves it forward
    secrets: dict[SecretId, str] = {}  # Secret Manager secrets the stack declares: id -> what it holds
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
