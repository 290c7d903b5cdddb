"""The Google APIs the stack uses, enabled once per project and left enabled when the stack is destroyed,
and a wait after them.

Enabling an API returns before it is usable everywhere: its Google-managed service accounts (the Cloud
Run, Compute, Pub/Sub, Cloud Build service agents) and its IAM bindings take a while to propagate, and a
resource created at once can fail with "service agent does not exist" or a 403. `wait` (a `time_sleep`
that depends on every enablement) is what every other resource of the stack depends on (infra/stack.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from cdktf_cdktf_provider_google.project_service import ProjectService
from cdktf_cdktf_provider_time.sleep import Sleep
from constructs import Construct

# Long enough for service agents and their bindings to propagate after a first enablement; an API that
# is already on makes no change, so the wait runs once, on the first apply (or when an API is added).
PROPAGATION_WAIT = "120s"


class ProjectServices(Construct):
    """Enables each API in `services` (e.g. `run.googleapis.com`); `wait` is the time_sleep after them."""

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
        self.wait = Sleep(
            self,
            "wait",
            create_duration=PROPAGATION_WAIT,
            # Runs again whenever the set of APIs changes.
            triggers={"services": ",".join(sorted(services))},
            depends_on=self.resources,
        )
