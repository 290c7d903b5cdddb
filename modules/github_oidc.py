"""GitHub Actions -> Google Cloud without keys: a workload identity pool, an OIDC provider, a deployer.

- The provider accepts only tokens of the configured repository's deploy job: the `sub` claim of a job
  in GitHub environment E is `repo:OWNER/REPO:environment:E`, the ref must be the deploy branch, and the
  numeric `repository_owner_id` and `repository_id` must be the configured ones (names can be taken over
  after a rename or deletion; ids cannot), so forks, other repositories, other environments, other
  branches and pull requests cannot even get a federated token.
- The deployer service account may be impersonated only by that repository (principalSet on
  `attribute.repository_id`), and holds only what a release (scripts/deploy.sh) needs: submit builds as
  the build service account (Cloud Build editor, its sources bucket, logs to follow the build), push
  to and read the one Artifact Registry repository, deploy revisions of the one Cloud Run service
  (run.developer on it), call it for the release gate (run.invoker on it, and the API keys secret, whose
  first key the gate sends), act as its runtime service account (to deploy revisions that run as it),
  and roll the GPU group to a new image digest (a custom role: get and update instance group managers).
"""

from __future__ import annotations

from cdktf_cdktf_provider_google.artifact_registry_repository import ArtifactRegistryRepository
from cdktf_cdktf_provider_google.artifact_registry_repository_iam_member import (
    ArtifactRegistryRepositoryIamMember,
)
from cdktf_cdktf_provider_google.cloud_run_v2_service_iam_member import CloudRunV2ServiceIamMember
from cdktf_cdktf_provider_google.iam_workload_identity_pool import IamWorkloadIdentityPool
from cdktf_cdktf_provider_google.iam_workload_identity_pool_provider import IamWorkloadIdentityPoolProvider
from cdktf_cdktf_provider_google.project_iam_custom_role import ProjectIamCustomRole
from cdktf_cdktf_provider_google.project_iam_member import ProjectIamMember
from cdktf_cdktf_provider_google.secret_manager_secret_iam_member import SecretManagerSecretIamMember
from cdktf_cdktf_provider_google.service_account_iam_member import ServiceAccountIamMember
from cdktf_cdktf_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from constructs import Construct

from modules.build_trigger import BuildTrigger
from modules.cloud_run_service import CloudRunService
from modules.service_identity import ServiceIdentity

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
# What rolling the GPU group to a new digest takes (all-instances-config update, wait-until, list-errors).
GPU_RELEASE_PERMISSIONS = [
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
    "compute.regionOperations.get",
]


def attribute_condition(
    owner: str, repo: str, environment: str, branch: str, owner_id: int, repository_id: int
) -> str:
    """CEL: tokens of `owner/repo` (pinned by its numeric ids) jobs in GitHub environment `environment`
    on `branch` only. GitHub's token carries the ids as strings."""
    return (
        f"assertion.sub == 'repo:{owner}/{repo}:environment:{environment}' "
        f"&& assertion.ref == 'refs/heads/{branch}' "
        f"&& assertion.repository_owner_id == '{owner_id}' "
        f"&& assertion.repository_id == '{repository_id}'"
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
        owner_id: int,
        repository_id: int,
        environment: str,
        branch: str,
        pool_id: str,
        provider_id: str,
        account_id: str,
        repository: ArtifactRegistryRepository,
        service: CloudRunService,
        build: BuildTrigger,
        api_keys_secret: str | None,
        gpu_vm_account: ServiceIdentity | None,
    ) -> None:
        """`api_keys_secret`: the reference of the secret the release gate reads (None: no keys);
        `gpu_vm_account`: the GPU VMs' identity when the env has a GPU group the release rolls."""
        super().__init__(scope, id_)
        self.pool = IamWorkloadIdentityPool(
            self,
            "pool",
            project=project,
            workload_identity_pool_id=pool_id,
            display_name="GitHub Actions",
            description=f"Deploys of {owner}/{repo}",
        )
        self.provider = IamWorkloadIdentityPoolProvider(
            self,
            "provider",
            project=project,
            workload_identity_pool_id=self.pool.workload_identity_pool_id,
            workload_identity_pool_provider_id=provider_id,
            display_name="GitHub Actions OIDC",
            attribute_mapping={
                "google.subject": "assertion.sub",
                "attribute.repository": "assertion.repository",
                "attribute.ref": "assertion.ref",
                "attribute.actor": "assertion.actor",
                "attribute.repository_owner_id": "assertion.repository_owner_id",
                "attribute.repository_id": "assertion.repository_id",
            },
            attribute_condition=attribute_condition(
                owner, repo, environment, branch, owner_id, repository_id
            ),
            oidc={"issuer_uri": GITHUB_ISSUER},
        )
        self.deployer = ServiceIdentity(
            self,
            "deployer",
            project=project,
            account_id=account_id,
            display_name="nanochat deployer",
            # Cloud Build has no per-build IAM: submitting builds and reading their logs is project-wide.
            project_roles=["roles/cloudbuild.builds.editor", "roles/logging.viewer"],
        )
        ServiceAccountIamMember(
            self,
            "federation",
            service_account_id=self.deployer.account.name,
            role="roles/iam.workloadIdentityUser",
            member=f"principalSet://iam.googleapis.com/{self.pool.name}/attribute.repository_id/{repository_id}",
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
        acted_as = [("runtime", service.identity), ("builder", build.identity)]
        if gpu_vm_account:
            acted_as.append(("gpu", gpu_vm_account))
        for name, account in acted_as:
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
        if api_keys_secret:
            SecretManagerSecretIamMember(
                self,
                "read-api-keys",
                project=project,
                secret_id=api_keys_secret,
                role="roles/secretmanager.secretAccessor",
                member=self.deployer.member,
            )
        if gpu_vm_account:
            role = ProjectIamCustomRole(
                self,
                "gpu-release-role",
                project=project,
                role_id=f"nanochatGpuRelease_{env}",
                title=f"nanochat {env}: roll the GPU group to a released image",
                permissions=GPU_RELEASE_PERMISSIONS,
            )
            ProjectIamMember(
                self, "gpu-release", project=project, role=role.name, member=self.deployer.member
            )
