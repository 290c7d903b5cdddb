"""The budget kill switch: the Pub/Sub topic the budget publishes to, and the function that acts on it.

At 100% of the budget the function (its code: infra/kill_switch/main.py, which says what it does) turns
the GPU group's autoscaler off, resizes the group to 0 and caps the Cloud Run service at one instance.
Opt-in per env (`budget.kill_switch`): it stops the service to stop the spending.

- Topic `nanochat-budget-ENV`. The budget publishes as `billing-budget-alert@system.gserviceaccount.com`;
  it gets publisher on this topic only (`budget_topic_id` depends on that grant: give it to `Budget`).
- One service account runs the function and is the Eventarc trigger's identity. It holds a custom role
  with exactly the permissions the function uses (no predefined role is this narrow:
  compute.instanceAdmin.v1 could also create and delete VMs), and `run.invoker` on its own function only.
  With `runtime_service_account`, it may act as the Cloud Run service's identity, which Cloud Run checks
  on service updates.
- The source: infra/kill_switch's files zipped (`TerraformAsset`) into a bucket object named by the
  archive's hash, so a code change redeploys the function and nothing else does.
- The function: Cloud Run functions (2nd gen), Python 3.12, at most one instance, internal ingress only
  (Eventarc's Pub/Sub deliveries count as internal), and no retries (a failed run waits for the budget's
  next notification instead of being retried for days).

- The alert: a Cloud Monitoring log-match policy, "nanochat ENV kill switch acted" (CRITICAL), emails the
  notification channels whenever the function logs that it changed something (`acted_filter`: its
  Cloud Run functions logs are `cloud_run_revision` entries of the service named like the function;
  `jsonPayload.event="acted"` is on exactly the lines of a write: autoscaler off, group resized, service
  capped). At most one email per `ALERT_RATE_LIMIT` (Google requires a rate limit on log-match policies).
  The budget's own threshold emails come from `Budget`; this says the spending was actually stopped.
  Runbook: docs/runbooks/budget.md.

It does not enable APIs: the stack does (cloudfunctions, eventarc, pubsub, cloudbuild, artifactregistry,
run, storage, monitoring).

Input: names and emails only (the topic, the function, its account and bucket, the group and service it
stops, the accounts it builds and acts as) and the notification channel ids. Outputs: `topic`,
`budget_topic_id` (for `Budget`), `function`, `identity`, `alert_policy`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from cdktf import AssetType, TerraformAsset
from cdktf_cdktf_provider_google.cloudfunctions2_function import Cloudfunctions2Function
from cdktf_cdktf_provider_google.monitoring_alert_policy import (
    MonitoringAlertPolicy,
    MonitoringAlertPolicyConditions,
)
from cdktf_cdktf_provider_google.project_iam_custom_role import ProjectIamCustomRole
from cdktf_cdktf_provider_google.project_iam_member import ProjectIamMember
from cdktf_cdktf_provider_google.pubsub_topic import PubsubTopic
from cdktf_cdktf_provider_google.pubsub_topic_iam_member import PubsubTopicIamMember
from cdktf_cdktf_provider_google.storage_bucket_object import StorageBucketObject
from constructs import Construct

from app.contract import RUNBOOK_BASE_URL
from modules.grants import act_as, bucket_role, run_service_role
from modules.private_bucket import private_bucket
from modules.service_identity import ServiceIdentity

FUNCTION_SOURCE = Path(__file__).resolve().parent.parent / "infra" / "kill_switch"
FUNCTION_FILES = ("main.py", "requirements.txt")  # only these ship (no __pycache__, no local files)
ENTRY_POINT = "kill_switch"
RUNTIME = "python312"
PUBSUB_EVENT = "google.cloud.pubsub.topic.v1.messagePublished"
BUDGET_PUBLISHER = "serviceAccount:billing-budget-alert@system.gserviceaccount.com"
MAX_SERVICE_INSTANCES = 1
# Exactly what infra/kill_switch/main.py calls: regionInstanceGroupManagers.get/resize,
# regionAutoscalers.get/patch, regionOperations.wait; Run v2 services.get/patch, operations.get.
PERMISSIONS = (
    "compute.autoscalers.get",
    "compute.autoscalers.update",
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
    "compute.regionOperations.get",
    "run.operations.get",
    "run.services.get",
    "run.services.update",
)
RUNBOOK_URL = f"{RUNBOOK_BASE_URL}budget.md"
# the fields of the function's JSON log line when a write went through (infra/kill_switch/main.py writes
# them; the function is deployed alone and cannot import this: tests/infra/test_kill_switch.py holds the
# two to each other by matching the filter against the lines it prints)
COMPONENT = "kill-switch"
ACTED = "acted"
ALERT_RATE_LIMIT = "3600s"  # one email per hour at most; the function acts once per budget period
ALERT_AUTO_CLOSE = "1800s"  # a log-match incident has no "resolved" signal: close it after 30 min


def acted_filter(function_name: str) -> str:
    """The Cloud Logging filter of the function's log lines that say it changed something.

    A Cloud Run function (2nd gen) runs as the Cloud Run service of the same name, so its stdout lines are
    `cloud_run_revision` entries labelled with that `service_name`; a JSON line's fields land in
    `jsonPayload` (its `severity` and `message` are lifted into the entry)."""
    return " AND ".join(
        (
            'resource.type="cloud_run_revision"',
            f'resource.labels.service_name="{function_name}"',
            f'jsonPayload.component="{COMPONENT}"',
            f'jsonPayload.event="{ACTED}"',
        )
    )


def staged_source() -> Path:
    """A folder with just the function's files, so the archive (and its hash) is the code alone."""
    folder = Path(tempfile.mkdtemp(prefix="nanochat-kill-switch-"))
    for name in FUNCTION_FILES:
        shutil.copy2(FUNCTION_SOURCE / name, folder / name)
    return folder


class KillSwitch(Construct):
    """Topic, function and identity that stop `gpu_group` and cap `service_name` when the budget is spent."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        region: str,
        env: str,
        topic_name: str,
        function_name: str,
        account_id: str,
        bucket: str,
        gpu_group: str | None,
        service_name: str,
        labels: Mapping[str, str],
        notification_channel_ids: Sequence[str],
        runtime_service_account: str | None = None,
        build_service_account: str | None = None,
        docker_repository: str | None = None,
    ) -> None:
        """`notification_channel_ids`: who the kill-switch-acted alert emails (`AlertChannels.ids`);
        `runtime_service_account`: the Cloud Run service's identity (email); `build_service_account`:
        the function's build identity (`projects/P/serviceAccounts/EMAIL`; default: Cloud Build's), which
        pushes the function's image to `docker_repository` (`projects/P/locations/R/repositories/NAME`, one
        it may write to; default: the `gcf-artifacts` repository the service creates, where a dedicated
        build account has no rights)."""
        if build_service_account and not docker_repository:
            raise ValueError("a dedicated build account needs a docker_repository it may push to")
        super().__init__(scope, id_)

        self.topic = PubsubTopic(self, "topic", project=project, name=topic_name, labels=dict(labels))
        publisher = PubsubTopicIamMember(
            self,
            "budget-publisher",
            project=project,
            topic=self.topic.id,
            role="roles/pubsub.publisher",
            member=BUDGET_PUBLISHER,
        )
        # the topic's id, read through the grant: a budget given this is created after the grant
        self.budget_topic_id = publisher.topic

        self.identity = ServiceIdentity(
            self,
            "identity",
            project=project,
            account_id=account_id,
            display_name=f"nanochat {env} budget kill switch",
        )
        role = ProjectIamCustomRole(
            self,
            "role",
            project=project,
            role_id=f"nanochatKillSwitch_{env.replace('-', '_')}",
            title=f"nanochat {env} budget kill switch",
            description="Stop the GPU group and cap the Cloud Run service (infra/kill_switch).",
            permissions=list(PERMISSIONS),
        )
        ProjectIamMember(self, "role-member", project=project, role=role.id, member=self.identity.member)
        if runtime_service_account:
            act_as(
                self,
                "act-as-runtime",
                service_account=f"projects/{project}/serviceAccounts/{runtime_service_account}",
                member=self.identity.member,
            )

        self.bucket = private_bucket(
            self,
            "source-bucket",
            project=project,
            name=bucket,
            region=region,
            delete_when={"num_newer_versions": 3},
            force_destroy=True,
            labels=labels,
        )
        if build_service_account:  # the function's build reads its source
            bucket_role(
                self,
                "build-reads-source",
                bucket=self.bucket.name,
                member=f"serviceAccount:{build_service_account.rsplit('/', 1)[-1]}",
            )
        asset = TerraformAsset(self, "source", path=str(staged_source()), type=AssetType.ARCHIVE)
        source = StorageBucketObject(
            self,
            "source-object",
            bucket=self.bucket.name,
            name=f"kill-switch-{asset.asset_hash}.zip",
            source=asset.path,
        )

        environment = {
            "KILL_SWITCH_PROJECT": project,
            "KILL_SWITCH_REGION": region,
            "KILL_SWITCH_GPU_GROUP": gpu_group or "",
            "KILL_SWITCH_SERVICE": service_name,
            "KILL_SWITCH_MAX_INSTANCES": str(MAX_SERVICE_INSTANCES),
        }
        self.function = Cloudfunctions2Function(
            self,
            "function",
            project=project,
            location=region,
            name=function_name,
            description=f"nanochat {env}: at 100% of the budget, stop the GPU group and cap Cloud Run",
            labels=dict(labels),
            build_config={
                "runtime": RUNTIME,
                "entry_point": ENTRY_POINT,
                "source": {"storage_source": {"bucket": self.bucket.name, "object": source.name}},
                **({"service_account": build_service_account} if build_service_account else {}),
                **({"docker_repository": docker_repository} if docker_repository else {}),
            },
            service_config={
                "min_instance_count": 0,
                "max_instance_count": 1,
                "available_memory": "256M",
                "timeout_seconds": 540,
                "ingress_settings": "ALLOW_INTERNAL_ONLY",
                "all_traffic_on_latest_revision": True,
                "service_account_email": self.identity.email,
                "environment_variables": environment,
            },
            event_trigger={
                "trigger_region": region,
                "event_type": PUBSUB_EVENT,
                "pubsub_topic": self.topic.id,
                "retry_policy": "RETRY_POLICY_DO_NOT_RETRY",
                "service_account_email": self.identity.email,
            },
        )
        # Eventarc delivers as the trigger's identity: it may invoke this function and nothing else.
        run_service_role(
            self,
            "trigger-invoker",
            project=project,
            location=region,
            service=self.function.name,
            member=self.identity.member,
        )

        self.alert_policy = MonitoringAlertPolicy(
            self,
            "acted-alert",
            project=project,
            display_name=f"nanochat {env} kill switch acted",
            combiner="OR",
            severity="CRITICAL",
            notification_channels=list(notification_channel_ids),
            user_labels={**labels, "severity": "critical"},
            documentation={
                "content": (
                    f"The budget kill switch ({function_name}) stopped the spending of nanochat {env}: the "
                    "budget is used up, so it turned the GPU group's autoscaler off, resized the group to 0 "
                    f"and/or capped the Cloud Run service {service_name} at {MAX_SERVICE_INSTANCES} "
                    "instance(s). Nothing restarts by itself.\n\n"
                    f"Runbook: {RUNBOOK_URL}"
                ),
                "mime_type": "text/markdown",
                "subject": f"[CRITICAL] nanochat {env}: budget spent, the kill switch stopped the spending",
            },
            alert_strategy={
                "notification_rate_limit": {"period": ALERT_RATE_LIMIT},
                "auto_close": ALERT_AUTO_CLOSE,
            },
            conditions=[
                MonitoringAlertPolicyConditions(
                    display_name="the kill switch changed the GPU group or the Cloud Run service",
                    condition_matched_log={"filter": acted_filter(function_name)},
                )
            ],
        )
