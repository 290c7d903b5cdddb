"""Hub downloads, offline: checksums of local files, the retry helper, and a clear error with no Hub."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.data.hub import (
    Checksum,
    ChecksumError,
    DownloadError,
    download_shards,
    file_checksum,
    is_transient_error,
    verify_checksum,
    with_retries,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


class Flaky:
    """A real function that fails with `error` for its first `failures` calls, then returns "done"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_retries_with_exponential_backoff_until_it_works():
    flaky, waits = Flaky(3, ConnectionError("connection reset")), []
    assert with_retries(flaky, max_retries=5, base_delay=0.5, sleep=waits.append) == "done"
    assert flaky.calls == 4
    assert waits == [0.5, 1.0, 2.0]


def test_backoff_is_capped():
    flaky, waits = Flaky(6, TimeoutError("read timed out")), []
    with_retries(flaky, max_retries=6, base_delay=1.0, max_delay=5.0, sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_gives_up_after_max_retries_with_the_cause():
    flaky, waits = Flaky(10, ConnectionError("network unreachable")), []
    with pytest.raises(DownloadError, match="fetching x failed after 3 attempts: ConnectionError") as caught:
        with_retries(flaky, max_retries=2, sleep=waits.append, describe="fetching x")
    assert flaky.calls == 3 and len(waits) == 2
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_permanent_errors_are_not_retried():
    flaky, waits = Flaky(1, PermissionError("no")), []
    with pytest.raises(DownloadError, match="fetching x failed: PermissionError: no"):
        with_retries(flaky, max_retries=5, sleep=waits.append, describe="fetching x")
    assert flaky.calls == 1 and waits == []


def test_a_damaged_download_is_tried_again():
    flaky, waits = Flaky(1, ChecksumError("bad bytes")), []
    assert with_retries(flaky, max_retries=1, sleep=waits.append) == "done"
    assert waits == [1.0]


def test_which_hub_errors_are_transient():
    httpx2 = pytest.importorskip("httpx2")  # the HTTP client of the installed huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    def http_error(status: int) -> HfHubHTTPError:
        response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))
        return HfHubHTTPError(f"status {status}", response=response)

    assert is_transient_error(http_error(503)) and is_transient_error(http_error(429))
    assert not is_transient_error(http_error(404)) and not is_transient_error(http_error(401))
    assert is_transient_error(httpx2.ConnectError("name or service not known"))
    assert not is_transient_error(OfflineModeIsEnabled("offline mode is enabled"))
    try:  # how hf_hub_download reports a failed connection: wrapped, with the cause chained
        try:
            raise httpx2.ReadTimeout("timed out")
        except httpx2.ReadTimeout as exc:
            raise LocalEntryNotFoundError("cannot find the requested files") from exc
    except LocalEntryNotFoundError as wrapped:
        assert is_transient_error(wrapped)


def test_checksums_of_local_files(tmp_path):
    path = tmp_path / "shard_00000.parquet"
    path.write_bytes(b"hello\n")
    assert file_checksum(path, "sha256") == hashlib.sha256(b"hello\n").hexdigest()
    assert (
        file_checksum(path, "git-blob-sha1") == "ce013625030ba8dba906f756967f9e9ca394464a"
    )  # git hash-object
    verify_checksum(path, Checksum("sha256", hashlib.sha256(b"hello\n").hexdigest()))
    assert path.exists()


def test_a_mismatch_deletes_the_file(tmp_path):
    path = tmp_path / "shard_00000.parquet"
    path.write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match=r"shard_00000\.parquet: sha256 is [0-9a-f]{64}, the Hub says 0+"):
        verify_checksum(path, Checksum("sha256", "0" * 64))
    assert not path.exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(DownloadError, match="num_shards must be a positive int"):
        download_shards("owner/repo", 0, tmp_path)
    with pytest.raises(DownloadError, match=r"must contain '\{index\}'"):
        download_shards("owner/repo", 3, tmp_path, filename_pattern="train.parquet")
    with pytest.raises(DownloadError, match=r"must contain '\{index\}'"):
        download_shards("owner/repo", 3, tmp_path, filename_pattern="shard_{number}.parquet")


@pytest.mark.integration
def test_offline_hub_gives_a_clear_error(tmp_path):
    """A real process with HF_HUB_OFFLINE=1 (huggingface_hub reads it at import): no retries, one message."""
    script = (
        "import sys\n"
        "from nanochat.data.hub import DownloadError, download_shards\n"
        "try:\n"
        "    download_shards('karpathy/fineweb-edu-100b-shuffle', 2, sys.argv[1], progress=False)\n"
        "except DownloadError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("DownloadError cannot reach the Hugging Face Hub"), result.stdout
    assert "offline mode is on (HF_HUB_OFFLINE)" in result.stdout
    assert "retry" not in result.stderr and "attempts" not in result.stdout  # refused at once, no backoff
    assert list(tmp_path.iterdir()) == []
