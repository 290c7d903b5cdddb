"""The resource-level IAM grants the constructs repeat, one helper each, created in the caller's scope.

Each grants one role on one resource to one member (additive `*_iam_member`, never authoritative policies),
so a construct owns exactly the access it gives. Project-level roles belong to `modules.service_identity`.
"""

from __future__ import annotations

from cdktf_cdktf_provider_google.cloud_run_v2_service_iam_member import CloudRunV2ServiceIamMember
from cdktf_cdktf_provider_google.secret_manager_secret_iam_member import SecretManagerSecretIamMember
from cdktf_cdktf_provider_google.service_account_iam_member import ServiceAccountIamMember
from cdktf_cdktf_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from constructs import Construct


def secret_accessor(
    scope: Construct, id_: str, *, project: str, secret_id: str, member: str
) -> SecretManagerSecretIamMember:
    """`member` may read the versions of secret `secret_id`."""
    return SecretManagerSecretIamMember(
        scope,
        id_,
        project=project,
        secret_id=secret_id,
        role="roles/secretmanager.secretAccessor",
        member=member,
    )


def run_service_role(
    scope: Construct,
    id_: str,
    *,
    project: str,
    location: str,
    service: str,
    member: str,
    role: str = "roles/run.invoker",
) -> CloudRunV2ServiceIamMember:
    """`member` holds `role` (by default: may call it) on the Cloud Run service `service`."""
    return CloudRunV2ServiceIamMember(
        scope, id_, project=project, location=location, name=service, role=role, member=member
    )


def act_as(scope: Construct, id_: str, *, service_account: str, member: str) -> ServiceAccountIamMember:
    """`member` may act as `service_account` (its resource name, `projects/P/serviceAccounts/EMAIL`)."""
    return ServiceAccountIamMember(
        scope, id_, service_account_id=service_account, role="roles/iam.serviceAccountUser", member=member
    )


def bucket_role(
    scope: Construct, id_: str, *, bucket: str, member: str, role: str = "roles/storage.objectViewer"
) -> StorageBucketIamMember:
    """`member` holds `role` (by default: may read its objects) on bucket `bucket`."""
    return StorageBucketIamMember(scope, id_, bucket=bucket, role=role, member=member)
