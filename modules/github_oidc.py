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

Input: `GitHubRepository` (owner, repo and their ids, deploy branch, environment), and the names of what a
release touches: the repository, the service, the build bucket, the service accounts it acts as, the API
keys secret. Outputs: `pool`, `provider` (its `name` is the workflows' provider), `deployer`.
"""

from __future__ import annotations

from cdktf_cdktf_provider_google.artifact_registry_repository_iam_member import (
    ArtifactRegistryRepositoryIamMember,
)
from cdktf_cdktf_provider_google.iam_workload_identity_pool import IamWorkloadIdentityPool
from cdktf_cdktf_provider_google.iam_workload_identity_pool_provider import IamWorkloadIdentityPoolProvider
from cdktf_cdktf_provider_google.project_iam_custom_role import ProjectIamCustomRole
from cdktf_cdktf_provider_google.project_iam_member import ProjectIamMember
from cdktf_cdktf_provider_google.service_account_iam_member import ServiceAccountIamMember
from constructs import Construct

from modules.grants import act_as, bucket_role, run_service_role, secret_accessor
from modules.inputs import GitHubRepository
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
    """Pool `pool_id`, provider `provider_id`, deployer `account_id` for `github.owner/github.repo`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        github: GitHubRepository,
        *,
        project: str,
        env: str,
        pool_id: str,
        provider_id: str,
        account_id: str,
        repository: str,
        repository_location: str,
        service_name: str,
        service_location: str,
        build_bucket: str,
        runtime_account: str,
        build_account: str,
        gpu_account: str | None,
        api_keys_secret: str | None,
    ) -> None:
        """`repository`, `repository_location`: the Artifact Registry repository releases push to;
        `service_name`, `service_location`: the Cloud Run service they deploy; `build_bucket`: where builds
        stage their sources; `runtime_account`, `build_account`, `gpu_account`: the service accounts
        (resource names, `projects/P/serviceAccounts/EMAIL`) of the service, the builds and the GPU VMs
        (None: the env has no GPU group to roll); `api_keys_secret`: the reference of the secret the
        release gate reads (None: no keys). The GitHub environment is `github.environment`, else `env`."""
        super().__init__(scope, id_)
        owner, repo, repository_id = github.owner, github.repo, github.repository_id
        environment = github.environment or env
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
                owner, repo, environment, github.deploy_branch, github.owner_id, repository_id
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
            location=repository_location,
            repository=repository,
            role="roles/artifactregistry.writer",
            member=self.deployer.member,
        )
        for role in ("roles/run.developer", "roles/run.invoker"):
            run_service_role(
                self,
                role.removeprefix("roles/"),
                project=project,
                location=service_location,
                service=service_name,
                member=self.deployer.member,
                role=role,
            )
        acted_as = {"runtime": runtime_account, "builder": build_account, "gpu": gpu_account}
        for name, account in acted_as.items():
            if account:
                act_as(self, f"act-as-{name}", service_account=account, member=self.deployer.member)
        for role in ("roles/storage.objectAdmin", "roles/storage.legacyBucketReader"):
            bucket_role(
                self,
                f"sources-{role.removeprefix('roles/storage.')}",
                bucket=build_bucket,
                member=self.deployer.member,
                role=role,
            )
        if api_keys_secret:
            secret_accessor(
                self, "read-api-keys", project=project, secret_id=api_keys_secret, member=self.deployer.member
            )
        if gpu_account:
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
