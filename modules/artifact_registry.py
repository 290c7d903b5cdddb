"""Artifact Registry Docker repository for the service's images, with a cleanup policy for old ones."""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.artifact_registry_repository import (
    ArtifactRegistryRepository,
    ArtifactRegistryRepositoryCleanupPolicies,
)
from constructs import Construct


class ArtifactRegistry(Construct):
    """A Docker repository `repository_id` in `location`.

    Cleanup: the `keep_recent_versions` newest versions of every image are always kept; any other version
    older than `delete_older_than_days` is deleted. `url` is the image prefix
    (`REGION-docker.pkg.dev/PROJECT/REPOSITORY`).
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        location: str,
        repository_id: str,
        keep_recent_versions: int,
        delete_older_than_days: int,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        self.repository = ArtifactRegistryRepository(
            self,
            "repository",
            project=project,
            location=location,
            repository_id=repository_id,
            format="DOCKER",
            description="nanochat service images (CPU and GPU builds), tagged with the commit SHA",
            labels=dict(labels),
            cleanup_policy_dry_run=False,
            cleanup_policies=[
                ArtifactRegistryRepositoryCleanupPolicies(
                    id="keep-recent",
                    action="KEEP",
                    most_recent_versions={"keep_count": keep_recent_versions},
                ),
                ArtifactRegistryRepositoryCleanupPolicies(
                    id="delete-old",
                    action="DELETE",
                    condition={"tag_state": "ANY", "older_than": f"{delete_older_than_days * 86400}s"},
                ),
            ],
        )
        self.url = f"{location}-docker.pkg.dev/{project}/{repository_id}"
