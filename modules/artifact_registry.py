"""Artifact Registry Docker repository for the service's images, with a cleanup policy for old ones.

Input: `RegistryInput` (repository id, retention). Outputs: `name` and `location` (the repository's, for
grants), `url` (the image prefix).
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.artifact_registry_repository import (
    ArtifactRegistryRepository,
    ArtifactRegistryRepositoryCleanupPolicies,
)
from constructs import Construct

from modules.inputs import RegistryInput


class ArtifactRegistry(Construct):
    """A Docker repository `spec.repository` in `location`.

    Cleanup: the `spec.keep_recent_versions` newest versions of every image are always kept; any other
    version older than `spec.delete_older_than_days` is deleted. `url` is the image prefix
    (`REGION-docker.pkg.dev/PROJECT/REPOSITORY`).
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: RegistryInput,
        *,
        project: str,
        location: str,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        self.repository = ArtifactRegistryRepository(
            self,
            "repository",
            project=project,
            location=location,
            repository_id=spec.repository,
            format="DOCKER",
            description="nanochat service images (CPU and GPU builds), tagged with the commit SHA",
            labels=dict(labels),
            cleanup_policy_dry_run=False,
            cleanup_policies=[
                ArtifactRegistryRepositoryCleanupPolicies(
                    id="keep-recent",
                    action="KEEP",
                    most_recent_versions={"keep_count": spec.keep_recent_versions},
                ),
                ArtifactRegistryRepositoryCleanupPolicies(
                    id="delete-old",
                    action="DELETE",
                    condition={"tag_state": "ANY", "older_than": f"{spec.delete_older_than_days * 86400}s"},
                ),
            ],
        )
        self.name = self.repository.name
        self.location = self.repository.location
        self.url = f"{location}-docker.pkg.dev/{project}/{spec.repository}"
