"""GitHub Actions -> Google Cloud without keys: a workload identity pool, an OIDC provider, a deployer.

- The provider accepts only tokens of the configured repository's deploy job: the `sub` claim of a job
  in GitHub environment E is `repo:OWNER/REPO:environment:E`, and the ref must be the deploy branch,
  so forks, other repositories, other environments, other branches and pull requests cannot even get
  a federated token.
- The deployer service account may be impersonated only by that repository (principalSet on
  `attribute.repository`), and holds only what a release (scripts/deploy.sh) needs: submit builds as
  the build service account (Cloud Build editor, its sources bucket, logs to follow the build), push
  to and read the one Artifact Registry repository, deploy revisions of the one Cloud Run service
  (run.developer on it), call it for the release gate (run.invoker on it), and act as its runtime
  service account (to deploy revisions that run as it).
"""

from __future__ import annotations

from cdktf_cdktf_provider_google.artifact_registry_repository import ArtifactRegistryRepository
from cdktf_cdktf_provider_google.artifact_registry_repository_iam_member import (
    ArtifactRegistryRepositoryIamMember,
)
from cdktf_cdktf_provider_google.cloud_run_v2_service_iam_member import CloudRunV2ServiceIamMember
from cdktf_cdktf_provider_google.iam_workload_identity_pool import IamWorkloadIdentityPool
from cdktf_cdktf_provider_google.iam_workload_identity_pool_provider import IamWorkloadIdentityPoolProvider
from cdktf_cdktf_provider_google.service_account_iam_member import ServiceAccountIamMember
from cdktf_cdktf_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from constructs import Construct

from modules.build_trigger import BuildTrigger
from modules.cloud_run_service import CloudRunService
from modules.service_identity import ServiceIdentity

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def attribute_condition(owner: str, repo: str, environment: str, branch: str) -> str:
    """CEL: tokens of `owner/repo` jobs in GitHub environment `environment` on `branch` only."""
    return (
        f"assertion.sub == 'repo:{owner}/{repo}:environment:{environment}' "
        f"&& assertion.ref == 'refs/heads/{branch}'"
    )


class GitHubOidc(Construct):
    """Pool `github`, provider `github-actions`, deployer `nanochat-deploy-ENV` for `owner/repo`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        env: str,
        owner: str,
        repo: str,
        environment: str,
        branch: str,
        repository: ArtifactRegistryRepository,
        service: CloudRunService,
        build: BuildTrigger,
    ) -> None:
        super().__init__(scope, id_)
        self.pool = IamWorkloadIdentityPool(
            self,
            "pool",
            project=project,
            workload_identity_pool_id="github",
            display_name="GitHub Actions",
            description=f"Deploys of {owner}/{repo}",
        )
        self.provider = IamWorkloadIdentityPoolProvider(
            self,
            "provider",
            project=project,
            workload_identity_pool_id=self.pool.workload_identity_pool_id,
            workload_identity_pool_provider_id="github-actions",
            display_name="GitHub Actions OIDC",
            attribute_mapping={
                "google.subject": "assertion.sub",
                "attribute.repository": "assertion.repository",
                "attribute.ref": "assertion.ref",
                "attribute.actor": "assertion.actor",
            },
            attribute_condition=attribute_condition(owner, repo, environment, branch),
            oidc={"issuer_uri": GITHUB_ISSUER},
        )
        self.deployer = ServiceIdentity(
            self,
            "deployer",
            project=project,
            account_id=f"nanochat-deploy-{env}",
            display_name="nanochat deployer",
            # Cloud Build has no per-build IAM: submitting builds and reading their logs is project-wide.
            project_roles=["roles/cloudbuild.builds.editor", "roles/logging.viewer"],
        )
        ServiceAccountIamMember(
            self,
            "federation",
            service_account_id=self.deployer.account.name,
            role="roles/iam.workloadIdentityUser",
            member=f"principalSet://iam.googleapis.com/{self.pool.name}/attribute.repository/{owner}/{repo}",
        )
        ArtifactRegistryRepositoryIamMember(
            self,
            "push",
            project=project,
            location=repository.location,
            repository=repository.name,
            role="roles/artifactregistry.writer",
            member=self.deployer.member,
        )
        for role in ("roles/run.developer", "roles/run.invoker"):
            CloudRunV2ServiceIamMember(
                self,
                role.removeprefix("roles/"),
                project=project,
                location=service.service.location,
                name=service.service.name,
                role=role,
                member=self.deployer.member,
            )
        for name, account in (("runtime", service.identity), ("builder", build.identity)):
            ServiceAccountIamMember(
                self,
                f"act-as-{name}",
                service_account_id=account.account.name,
                role="roles/iam.serviceAccountUser",
                member=self.deployer.member,
            )
        for role in ("roles/storage.objectAdmin", "roles/storage.legacyBucketReader"):
            StorageBucketIamMember(
                self,
                f"sources-{role.removeprefix('roles/storage.')}",
                bucket=build.source_bucket.name,
                role=role,
                member=self.deployer.member,
            )
