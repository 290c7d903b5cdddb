"""The typed inputs of the constructs in `modules/`: one frozen, validated object per construct.

A construct takes its input object plus ids, names and emails (a project id, a service account email, a
repository name); never another construct. The env file's sections (`infra/config.py`) are these objects
or extend them with what only the stack reads, so an env file is validated by the same types the
constructs take. Where a construct needs values from several sections, the stack builds its input.

Pure pydantic (no cdktf): `infra/config.py` and the scripts import this in milliseconds.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from modules.alert_rules import AlertRule

# GCP naming rules, so that a bad name fails at synth time instead of halfway through an apply.
Zone = Annotated[str, StringConstraints(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]
ResourceName = Annotated[str, StringConstraints(pattern=r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$")]
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

# Env var names that carry credentials; their values belong in Secret Manager (`secret_env`).
SECRET_NAME = re.compile(r"(^|_)(KEYS?|SECRETS?|TOKEN|PASSWORD|PASSWD|CREDENTIALS?)(_|$)")


class Input(BaseModel):
    """Frozen, and unknown fields are errors (a typo fails instead of falling back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_env(env: dict[str, str]) -> None:
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


class RegistryInput(Input):
    """`modules.artifact_registry`: the Docker repository and how long its versions live."""

    repository: ResourceName = "nanochat"
    keep_recent_versions: int = Field(10, ge=1)  # never deleted, however old
    delete_older_than_days: int = Field(30, ge=1)  # other versions are deleted past this age


class GitHubRepository(Input):
    """`modules.build_trigger`, `modules.github_oidc`: the repository whose workflows may deploy (workload
    identity) and whose pushes trigger builds."""

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


class CloudRunServiceInput(Input):
    """`modules.cloud_run_service`: the CPU service's size, scaling, access and environment."""

    initial_image: str = Field(min_length=1)  # releases own the image: this is only the first
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
    secret_env: dict[EnvVarName, SecretId] = {}  # env var -> a declared secret (modules.secrets)

    @model_validator(mode="after")
    def _check_service(self) -> CloudRunServiceInput:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) exceeds max_instances ({self.max_instances})"
            )
        check_env(self.env)
        overlap = set(self.env) & set(self.secret_env)
        if overlap:
            raise ValueError(f"{', '.join(sorted(overlap))} set in both env and secret_env")
        return self


class AutoscalingInput(Input):
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    target_utilization: float = Field(0.8, gt=0, le=1)  # of max_rate_per_instance, across the group

    @model_validator(mode="after")
    def _check_replicas(self) -> AutoscalingInput:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class GpuSchedule(Input):
    """Working hours for the GPU group: `size` VMs from `start` to `stop` (same days), 0 otherwise.

    Realized as an autoscaler scaling schedule: `start` is its cron schedule, the time to `stop` its
    duration. Both must name the same days; minute and hour are plain numbers.
    """

    start: DailyCron = "0 8 * * 1-5"
    stop: DailyCron = "0 19 * * 1-5"
    time_zone: str = Field("UTC", min_length=1)  # an IANA time zone, e.g. Europe/Berlin
    size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_hours(self) -> GpuSchedule:
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


class GpuGroupInput(Input):
    """`modules.gpu_inference_group`: the VMs (one L4 each by default), their image family, size and env."""

    machine_type: Annotated[str, StringConstraints(pattern=r"^g2-standard-[0-9]+$")] = "g2-standard-8"
    accelerator_type: Literal["nvidia-l4"] = "nvidia-l4"
    accelerator_count: int = Field(1, ge=1, le=8)
    zones: list[Zone] = Field(min_length=1)
    image_project: str = "deeplearning-platform-release"
    # A Deep Learning VM family with the NVIDIA driver preinstalled, whose CUDA serves the image's
    # (Dockerfile's gpu target); families resolve only to images that are not deprecated.
    image_family: str = Field(min_length=1)
    disk_size_gb: int = Field(100, ge=50)
    target_size: int = Field(0, ge=0)  # once released, without autoscaling; 0 = an idle group costs nothing
    autoscaling: AutoscalingInput | None = None
    schedule: GpuSchedule | None = None  # working hours (autoscaler scaling schedule), 0 VMs otherwise
    max_surge: int = Field(1, ge=1)
    spot: bool = False
    env: dict[EnvVarName, str] = {}
    secret_env: dict[EnvVarName, SecretId] = {}  # env var -> a declared secret (modules.secrets)

    @model_validator(mode="after")
    def _check_group(self) -> GpuGroupInput:
        region_of = {zone.rsplit("-", 1)[0] for zone in self.zones}
        if len(region_of) != 1:
            raise ValueError(f"zones must be in one region, got {sorted(region_of)}")
        # GCE rule for regional groups: a fixed surge is 0 or at least the number of zones.
        if self.max_surge < len(self.zones):
            raise ValueError(
                f"max_surge ({self.max_surge}) must be at least the number of zones ({len(self.zones)}) "
                "for a regional instance group"
            )
        check_env(self.env)
        if self.schedule and self.autoscaling and self.schedule.size > self.autoscaling.max_replicas:
            raise ValueError(
                f"schedule.size ({self.schedule.size}) exceeds autoscaling.max_replicas "
                f"({self.autoscaling.max_replicas})"
            )
        return self


class LoadBalancerSettings(Input):
    """What the env file says about the GPU group's load balancer (`gpu:` section)."""

    # HTTPS on this domain with a Google-managed certificate (point its A record at the `gpu_address`
    # output); port 80 then only redirects. Without a domain the load balancer needs insecure_http: true.
    domain: Domain | None = None
    # Cloud Armor: a client IP over this many requests a minute is answered 429 until its rate drops.
    rate_limit_per_minute: int = Field(600, ge=10)
    max_rate_per_instance: float = Field(10.0, gt=0)  # requests/s one VM serves within the SLOs


class LoadBalancerInput(LoadBalancerSettings):
    """`modules.http_load_balancer`: the env's settings and how long a request may take."""

    request_timeout_s: int = Field(ge=1, le=3600)


class AlertPolicySettings(Input):
    """What the env file says about Cloud Monitoring's alert policies (`monitoring:` section)."""

    evaluation_interval_s: int = Field(30, ge=30, multiple_of=30)  # for groups without an interval
    uptime_check_period_s: Literal[60, 300, 600, 900] | None = None  # None: no uptime check


class MonitoringInput(AlertPolicySettings):
    """`modules.monitoring.Monitoring`: the rules to turn into policies, and how the service runs."""

    rules: tuple[AlertRule, ...]
    service_is_public: bool
    scales_to_zero: bool  # absence alerts would fire on every idle period: left out
    traced: bool = False  # the service exports traces (OTEL_* in its env): the trace-export alerts apply
    notify_warnings: bool = True  # off where Grafana emails the warnings instead


class GrafanaSmtp(Input):
    """The SMTP relay Grafana's email contact point sends through (Cloud Run blocks port 25)."""

    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")]  # smtp.example.com:587
    user: str = Field(min_length=1)
    from_address: Email
    password_secret: SecretId  # a declared secret (modules.secrets)


class GrafanaSettings(Input):
    """What the env file says about Grafana (`grafana:` section) that the construct reads."""

    smtp: GrafanaSmtp | None = None  # None: Grafana's alert rules have no email contact point
    viewers: list[Member] = []  # who may open Grafana (Cloud Run invoker); never allUsers


class GrafanaInput(GrafanaSettings):
    """`modules.grafana`: the env's settings, the dashboards and the alert rules it provisions."""

    dashboards: dict[str, str] = Field(min_length=1)  # file name -> dashboard JSON text
    rules: tuple[AlertRule, ...]
    deletion_protection: bool


class BudgetInput(Input):
    """`modules.budget`: a monthly amount on a billing account and the thresholds that email."""

    billing_account: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$")]
    amount: int = Field(gt=0)  # whole currency units per month
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    actual_thresholds: list[float] = Field([0.5, 0.9, 1.0], min_length=1)
    forecast_thresholds: list[float] = [1.0]

    @model_validator(mode="after")
    def _check_thresholds(self) -> BudgetInput:
        for name in ("actual_thresholds", "forecast_thresholds"):
            values = getattr(self, name)
            if any(v <= 0 for v in values) or values != sorted(set(values)):
                raise ValueError(f"{name} must be positive, increasing and distinct, got {values}")
        return self


class DataprepInput(Input):
    """`modules.dataprep`: the Dataproc Serverless data preparation's subnet and how long old objects of its
    bucket are kept."""

    # the batches' own subnet (Private Google Access, open internal connectivity); no other subnet's range
    subnet_cidr: Annotated[str, StringConstraints(pattern=r"^10\.[0-9]{1,3}\.[0-9]{1,3}\.0/(2[0-4])$")] = (
        "10.30.0.0/24"
    )
    keep_versions: int = Field(2, ge=1)  # older versions of a shard or staged file are deleted
