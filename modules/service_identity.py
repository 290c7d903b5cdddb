"""A dedicated service account and the project-level roles it holds; every workload gets its own."""

from __future__ import annotations

from collections.abc import Sequence

from cdktf_cdktf_provider_google.project_iam_member import ProjectIamMember
from cdktf_cdktf_provider_google.service_account import ServiceAccount
from constructs import Construct

PRIMITIVE_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer"})


class ServiceIdentity(Construct):
    """Service account `account_id` holding `project_roles` (additive members, never primitive roles).

    Resource-level grants (a repository, a bucket, a secret) belong to the construct that owns the
    resource; this only holds what must be granted on the project.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        account_id: str,
        display_name: str,
        project_roles: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, id_)
        primitive = sorted(PRIMITIVE_ROLES.intersection(project_roles))
        if primitive:
            raise ValueError(f"{account_id}: primitive roles are not allowed: {', '.join(primitive)}")
        self.account = ServiceAccount(
            self, "account", project=project, account_id=account_id, display_name=display_name
        )
        self.email = self.account.email
        self.name = self.account.name  # projects/P/serviceAccounts/EMAIL, what act-as grants name
        self.member = f"serviceAccount:{self.account.email}"
        for role in project_roles:
            ProjectIamMember(
                self, role.removeprefix("roles/"), project=project, role=role, member=self.member
            )
