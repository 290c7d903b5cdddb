"""Checkpoints to and from a bucket (`--bucket gs://…`), against a GCS emulator on 127.0.0.1 (the
`gcp-storage-emulator` package, started in-process by a fixture; `STORAGE_EMULATOR_HOST` points the real
google-cloud-storage client at it). Skipped, with the package to install, where either is missing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import CheckpointError, checkpoint_steps, read_state_dict
from nanochat.train.base import BaseConfig, train_base
from nanochat.train.config import ConfigError
from nanochat.train.distributed import DistContext
from nanochat.train.gcs import BucketMirror, parse_bucket_url
from nanochat.train.tracking import read_metrics
from tests.nanochat.train.test_base import tiny_config

storage = pytest.importorskip(
    "google.cloud.storage", reason="needs google-cloud-storage (pip install 'google-cloud-storage>=2.14')"
)
emulator = pytest.importorskip(
    "gcp_storage_emulator.server",
    reason="needs the GCS emulator (pip install 'gcp-storage-emulator>=2025.1')",
)

pytestmark = pytest.mark.integration  # a GCS emulator server on 127.0.0.1

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
BUCKET = "nanochat-checkpoints"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """An in-memory GCS emulator on 127.0.0.1 with one bucket; the environment points clients at it."""
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    client = storage.Client()
    client.create_bucket(BUCKET)
    try:
        yield client
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        server.stop()


def config(corpus, out: Path, **overrides) -> BaseConfig:
    """test_base's tiny run, saving every 4 of its 8 steps."""
    return tiny_config(corpus, out, **{"num_iterations": 8, "eval_every": 4, "save_every": 4, **overrides})


def objects(client, prefix: str) -> set[str]:
    return {b.name.removeprefix(prefix) for b in client.list_blobs(BUCKET, prefix=prefix)}


def test_checkpoints_round_trip_through_the_bucket(gcs, tiny_corpus, tmp_path):
    url = f"gs://{BUCKET}/runs/a"
    first = config(tiny_corpus, tmp_path / "first", num_iterations=4, bucket=url)
    train_base(first, CPU)
    assert objects(gcs, "runs/a/") == {"model_000004.pt", "meta_000004.json", "optim_000004_rank0.pt"}

    # another machine: an empty folder, the same run continued to step 8 from the bucket's step 4
    second = config(tiny_corpus, tmp_path / "second", bucket=url, resume=True, keep_last=1, keep_best=False)
    train_base(second, CPU)
    assert next(m["step"] for m in read_metrics(second.out) if "train_loss" in m) == 5  # trained from 4
    assert checkpoint_steps(second.out) == [8]
    assert objects(gcs, "runs/a/") == {"model_000008.pt", "meta_000008.json", "optim_000008_rank0.pt"}

    # the bucket's copy is byte-for-byte what was written locally
    fetched = tmp_path / "fetched"
    assert BucketMirror(url).download_latest(fetched) == 8
    for name in ("model_000008.pt", "optim_000008_rank0.pt", "meta_000008.json"):
        assert (fetched / name).read_bytes() == (Path(second.out) / name).read_bytes(), name
    local = read_state_dict(Path(second.out) / "model_000008.pt")
    assert all(torch.equal(local[k], v) for k, v in read_state_dict(fetched / "model_000008.pt").items())


def test_resume_from_an_empty_bucket_says_so(gcs, tiny_corpus, tmp_path):
    missing = r"no complete checkpoint in .*run nor in gs://nanochat-checkpoints/empty"
    with pytest.raises(CheckpointError, match=missing):
        train_base(config(tiny_corpus, tmp_path / "run", bucket=f"gs://{BUCKET}/empty", resume=True), CPU)


def test_a_step_without_its_meta_in_the_bucket_is_not_fetched(gcs, tmp_path):
    bucket = gcs.bucket(BUCKET)
    bucket.blob("half/model_000002.pt").upload_from_string(b"written before the meta, then killed")
    bucket.blob("half/model_000001.pt").upload_from_string(b"m")
    bucket.blob("half/meta_000001.json").upload_from_string(b"{}")
    mirror = BucketMirror(f"gs://{BUCKET}/half")
    assert mirror.complete_steps() == [1]
    assert mirror.download_latest(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_000001.json", "model_000001.pt"]


@pytest.mark.parametrize("url", ["s3://bucket/x", "gs://", "gs://UPPER/x", "bucket/x"])
def test_bad_bucket_urls_are_refused(url, tiny_corpus, tmp_path):
    with pytest.raises(CheckpointError, match="gs://BUCKET"):
        parse_bucket_url(url)
    with pytest.raises((ConfigError, CheckpointError), match="gs://BUCKET"):
        config(tiny_corpus, tmp_path, bucket=url)


def test_bucket_url_prefix():
    assert parse_bucket_url("gs://b-1/runs/x/") == ("b-1", "runs/x/")
    assert parse_bucket_url("gs://b-1") == ("b-1", "")
