"""A private, versioned Cloud Storage bucket: the one shape every bucket of the stack has.

Uniform bucket-level access, public access prevention enforced, versioning on, one lifecycle rule that
deletes what the caller says, and the env's labels. Grafana's provisioning files, the build sources and the
kill switch's source archive each live in one (`private_bucket`); readers get `modules.grants.bucket_role`.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.storage_bucket import StorageBucket, StorageBucketLifecycleRule
from constructs import Construct


def private_bucket(
    scope: Construct,
    id_: str,
    *,
    project: str,
    name: str,
    region: str,
    delete_when: Mapping[str, int],
    force_destroy: bool,
    labels: Mapping[str, str],
    storage_class: str | None = None,
) -> StorageBucket:
    """Bucket `name` in `region`; an object is deleted when it meets `delete_when` (a lifecycle condition,
    e.g. `{"age": 7}` or `{"num_newer_versions": 3}`)."""
    return StorageBucket(
        scope,
        id_,
        project=project,
        name=name,
        location=region.upper(),
        storage_class=storage_class,
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        versioning={"enabled": True},
        lifecycle_rule=[StorageBucketLifecycleRule(action={"type": "Delete"}, condition=dict(delete_when))],
        force_destroy=force_destroy,
        labels=dict(labels),
    )
