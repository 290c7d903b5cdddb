"""Cloud Build: the build service account, the bucket releases stage their sources in, and (optionally) a
trigger that builds `cloudbuild.yaml` on every push to the deploy branch.

Builds run as their own service account, which may only write logs, read the staged sources and push to
the one repository (no default Cloud Build account, no project-wide storage). Releases
(scripts/deploy.sh) build once per merge with `gcloud builds submit --service-account` (stack output
`build_service_account`) and `--gcs-source-staging-dir gs://PROJECT-nanochat-build/source` (the bucket made
here), so gcloud never looks for or creates its default `PROJECT_cloudbuild` bucket, which needs
project-wide bucket rights. One build per merge: the trigger exists only with `github.build_on_push`, and
then the release must not build as well.
`cloudbuild.yaml` receives the image paths as `_IMAGE` (CPU) and `_GPU_IMAGE` (GPU, empty: not built) and
tags with `$COMMIT_SHA`; a build with a user-managed service account must log to Cloud Logging only
(`options.logging: CLOUD_LOGGING_ONLY`). A trigger needs the GitHub repository connected to Cloud Build
once (the Cloud Build GitHub app), see docs/infra.md.

Input: `GitHubRepository` (owner, repo, deploy branch, `build_on_push`), and the names of the trigger, the
build account, the bucket, the repository and the images. Outputs: `identity` (the build account),
`source_bucket_name`, `pushable_repository`, `service_account_name` (as triggers and builds take it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cdktf_cdktf_provider_google.artifact_registry_repository_iam_member import (
    ArtifactRegistryRepositoryIamMember,
)
from cdktf_cdktf_provider_google.cloudbuild_trigger import CloudbuildTrigger
from constructs import Construct

from modules.grants import bucket_role
from modules.inputs import GitHubRepository
from modules.private_bucket import private_bucket
from modules.service_identity import ServiceIdentity

BUILD_FILE = "cloudbuild.yaml"


class BuildTrigger(Construct):
    """Builds `github.owner/github.repo` into `image` and `gpu_image` (`REGISTRY/NAME`, no tag); a trigger
    on pushes to `github.deploy_branch` only with `github.build_on_push`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        github: GitHubRepository,
        *,
        project: str,
        location: str,
        trigger_name: str,
        account_id: str,
        bucket: str,
        repository: str,
        repository_location: str,
        image: str,
        gpu_image: str | None,
        labels: Mapping[str, str],
    ) -> None:
        """`repository`, `repository_location`: the Artifact Registry repository builds push to."""
        super().__init__(scope, id_)
        self.identity = ServiceIdentity(
            self,
            "builder",
            project=project,
            account_id=account_id,
            display_name="nanochat Cloud Build",
            project_roles=["roles/logging.logWriter"],
        )
        # `pushable_repository`: the repository's name read through this grant, so a build that uses it
        # (the kill switch's function build) starts only once the build account may push there
        self.push = ArtifactRegistryRepositoryIamMember(
            self,
            "push",
            project=project,
            location=repository_location,
            repository=repository,
            role="roles/artifactregistry.writer",
            member=self.identity.member,
        )
        # Sources of release builds (--gcs-source-staging-dir); kept a week.
        self.source_bucket = private_bucket(
            self,
            "sources",
            project=project,
            name=bucket,
            region=location,
            delete_when={"age": 7},
            force_destroy=True,
            labels=labels,
        )
        self.source_bucket_name = self.source_bucket.name
        bucket_role(self, "read-sources", bucket=self.source_bucket.name, member=self.identity.member)
        self.pushable_repository = self.push.repository
        self.service_account_name = f"projects/{project}/serviceAccounts/{self.identity.email}"
        self.trigger = None
        if not github.build_on_push:
            return
        branch = github.deploy_branch
        self.trigger = CloudbuildTrigger(
            self,
            "trigger",
            project=project,
            location="global",
            name=trigger_name,
            description=f"Build {BUILD_FILE} on pushes to {branch}",
            github={"owner": github.owner, "name": github.repo, "push": {"branch": f"^{re.escape(branch)}$"}},
            filename=BUILD_FILE,
            substitutions={"_IMAGE": image, "_GPU_IMAGE": gpu_image or ""},
            service_account=self.service_account_name,
            include_build_logs="INCLUDE_BUILD_LOGS_WITH_STATUS",
        )
