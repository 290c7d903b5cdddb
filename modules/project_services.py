"""The Google APIs the stack uses, enabled once per project and left enabled when the stack is destroyed."""

from __future__ import annotations

from collections.abc import Sequence

from cdktf_cdktf_provider_google.project_service import ProjectService
from constructs import Construct


class ProjectServices(Construct):
    """Enables each API in `services` (e.g. `run.googleapis.com`); `resources` lists them for depends_on."""

    def __init__(self, scope: Construct, id_: str, *, project: str, services: Sequence[str]) -> None:
        super().__init__(scope, id_)
        self.resources = [
            ProjectService(
                self,
                service.split(".", 1)[0],
                project=project,
                service=service,
                # Disabling an API on destroy can break other users of the project; keep them on.
                disable_on_destroy=False,
                disable_dependent_services=False,
            )
            for service in services
        ]
