"""What a Dataproc Serverless batch of the Spark data preparation (nanochat/data/spark_prepare.py,
submitted by scripts/dataprep.sh) needs, on in an env with `dataprep.enabled: true` (off by default):

- one private bucket: the staged source files (`raw/`), the shards the job writes (`shards/`), the job's
  code (`deps/`, `--deps-bucket`) and the batches' staging files (`--staging-bucket`, instead of the
  project-wide bucket Dataproc would create);
- the batches' service account: `roles/dataproc.worker` on the project (required for a custom batch
  service account) and `roles/storage.objectAdmin` on that bucket only;
- a VPC with one regional subnet for the batches' VMs (internal IPs only): Private Google Access on, and
  ingress on all ports between the subnet's own addresses (Dataproc Serverless's "open subnet
  connectivity"); nothing else may connect.

Who submits needs `roles/dataproc.editor` and may act as the service account (the project owners in dev);
this construct grants neither. See docs/data.md "Spark" for the sources of these requirements.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdktf_cdktf_provider_google.compute_firewall import ComputeFirewall, ComputeFirewallAllow
from constructs import Construct

from modules.grants import bucket_role
from modules.inputs import DataprepInput
from modules.network import vpc_with_subnet
from modules.private_bucket import private_bucket
from modules.service_identity import ServiceIdentity

API = "dataproc.googleapis.com"
WORKER_ROLE = "roles/dataproc.worker"
BUCKET_ROLE = "roles/storage.objectAdmin"


class Dataprep(Construct):
    """Bucket `bucket`, service account `account_id` and network `network` (subnet of the same name) in
    `region`. Outputs: `bucket_name`, `identity` (email, member), `subnetwork_id`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        settings: DataprepInput,
        *,
        project: str,
        region: str,
        bucket: str,
        account_id: str,
        network: str,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        self.bucket = private_bucket(
            self,
            "bucket",
            project=project,
            name=bucket,
            region=region,
            delete_when={"num_newer_versions": settings.keep_versions},
            force_destroy=False,
            labels=labels,
        )
        self.bucket_name = self.bucket.name
        self.identity = ServiceIdentity(
            self,
            "identity",
            project=project,
            account_id=account_id,
            display_name="nanochat Spark data preparation (Dataproc Serverless batches)",
            project_roles=[WORKER_ROLE],
        )
        bucket_role(
            self, "bucket-admin", bucket=self.bucket.name, member=self.identity.member, role=BUCKET_ROLE
        )

        vpc, self.subnetwork = vpc_with_subnet(
            self, project=project, region=region, name=network, subnet=network, cidr=settings.subnet_cidr
        )
        self.subnetwork_id = self.subnetwork.id
        ComputeFirewall(
            self,
            "allow-internal",
            project=project,
            name=f"{network}-allow-internal",
            network=vpc.id,
            direction="INGRESS",
            source_ranges=[settings.subnet_cidr],
            destination_ranges=[settings.subnet_cidr],
            allow=[ComputeFirewallAllow(protocol="all")],
            log_config={"metadata": "INCLUDE_ALL_METADATA"},
        )
