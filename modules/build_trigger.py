"""Cloud Build: a trigger that builds `cloudbuild.yaml` on every push to the main branch, and what manual
builds (`gcloud builds submit`, scripts/deploy.sh) need.

Builds run as their own service account, which may only write logs, read the uploaded sources and push
to the one repository; manual builds pass it with `--service-account` (stack output
`build_service_account`) and upload their sources to the `PROJECT_cloudbuild` bucket made here (gcloud's
default, which gcloud would otherwise try to create with project-wide rights).
`cloudbuild.yaml` receives the image path as `_IMAGE` and tags with `$COMMIT_SHA`; a build with a
user-managed service account must log to Cloud Logging only (`options.logging: CLOUD_LOGGING_ONLY`).
The GitHub repository must be connected to Cloud Build once (the Cloud Build GitHub app), see docs/infra.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cdktf_cdktf_provider_google.artifact_registry_repository import ArtifactRegistryRepository
from cdktf_cdktf_provider_google.artifact_registry_repository_iam_member import (
    ArtifactRegistryRepositoryIamMember,
)
from cdktf_cdktf_provider_google.cloudbuild_trigger import CloudbuildTrigger
from cdktf_cdktf_provider_google.storage_bucket import StorageBucket, StorageBucketLifecycleRule
from cdktf_cdktf_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from constructs import Construct

from modules.service_identity import ServiceIdentity

BUILD_FILE = "cloudbuild.yaml"


class BuildTrigger(Construct):
    """Builds `github_owner/github_repo` on pushes to `branch` into `image` (`REGISTRY/NAME`)."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        env: str,
        github_owner: str,
        github_repo: str,
        branch: str,
        repository: ArtifactRegistryRepository,
        image: str,
        location: str,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        self.identity = ServiceIdentity(
            self,
            "builder",
            project=project,
            account_id=f"nanochat-build-{env}",
            display_name="nanochat Cloud Build",
            project_roles=["roles/logging.logWriter"],
        )
        ArtifactRegistryRepositoryIamMember(
            self,
            "push",
            project=project,
            location=repository.location,
            repository=repository.name,
            role="roles/artifactregistry.writer",
            member=self.identity.member,
        )
        # Sources of manual builds; kept a week.
        self.source_bucket = StorageBucket(
            self,
            "sources",
            project=project,
            name=f"{project}_cloudbuild",
            location=location.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning={"enabled": True},
            lifecycle_rule=[StorageBucketLifecycleRule(action={"type": "Delete"}, condition={"age": 7})],
            force_destroy=True,
            labels=dict(labels),
        )
        StorageBucketIamMember(
            self,
            "read-sources",
            bucket=self.source_bucket.name,
            role="roles/storage.objectViewer",
            member=self.identity.member,
        )
        self.service_account_name = f"projects/{project}/serviceAccounts/{self.identity.email}"
        self.trigger = CloudbuildTrigger(
            self,
            "trigger",
            project=project,
            location="global",
            name=f"nanochat-{env}-main",
            description=f"Build {BUILD_FILE} on pushes to {branch}",
            github={"owner": github_owner, "name": github_repo, "push": {"branch": f"^{re.escape(branch)}$"}},
            filename=BUILD_FILE,
            substitutions={"_IMAGE": image},
            service_account=self.service_account_name,
            include_build_logs="INCLUDE_BUILD_LOGS_WITH_STATUS",
        )
