"""The env's Secret Manager secrets, declared by the stack (the env file's `secrets:`), without values.

The stack owns that each secret exists, its replication and labels; it never holds a value:
`scripts/bootstrap.sh` adds the first version (asks for it or generates it), and people rotate them with
`gcloud secrets versions add`. Readers get `roles/secretmanager.secretAccessor` on the secrets they use,
one grant per secret, from the construct that mounts them (never project-wide).
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.secret_manager_secret import SecretManagerSecret
from constructs import Construct


class Secrets(Construct):
    """One `google_secret_manager_secret` per entry of `secrets` (id -> description); `ids` maps each id
    to the secret's Terraform reference, so that mounts and grants depend on its creation."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        secrets: Mapping[str, str],
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        self.resources = {
            secret_id: SecretManagerSecret(
                self,
                secret_id,
                project=project,
                secret_id=secret_id,
                replication={"auto": {}},
                labels=dict(labels),
                annotations={"description": description[:255]} if description else None,
            )
            for secret_id, description in secrets.items()
        }
        self.ids = {secret_id: secret.secret_id for secret_id, secret in self.resources.items()}
