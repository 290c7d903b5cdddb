"""Download pretraining shards from a Hugging Face dataset repo and verify them.

The public nanochat shards (e.g. FineWeb-Edu or ClimbMix repackaged as `shard_00000.parquet`, ...) live in
dataset repos on the Hub. `download_shards` fetches the first N of them into a folder with
`huggingface_hub.hf_hub_download` (which resumes partial downloads), retries network failures with
exponential backoff, and checks each file against the SHA-256 the Hub records for it (its LFS object id).
Files already present with the right checksum are not downloaded again.

It deliberately does not read or convert shards (`shards.py` does) and has no cache of its own: the
output folder is the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

from nanochat.files import sha256_file

DEFAULT_FILENAME_PATTERN = "shard_{index:05d}.parquet"
PATHS_PER_REQUEST = 100  # paths-info calls are batched; one call per 100 shards
RETRY_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})

log = logging.getLogger(__name__)
T = TypeVar("T")


class DownloadError(ValueError):
    """A download that cannot be done or did not arrive intact; the message says what to do."""


class ChecksumError(DownloadError):
    """A file whose bytes do not match the checksum the Hub records for it."""


@dataclass(frozen=True)
class Checksum:
    """What a file's bytes must hash to: `sha256` (LFS files) or `git-blob-sha1` (small git files)."""

    algorithm: str
    value: str


def download_shards(
    repo_id: str,
    num_shards: int,
    out_dir: str | os.PathLike[str],
    repo_type: str = "dataset",
    revision: str | None = None,
    filename_pattern: str = DEFAULT_FILENAME_PATTERN,
    max_retries: int = 5,
    progress: bool = True,
) -> list[Path]:
    """Download shards 0..num_shards-1 of a Hub repo into `out_dir`; returns their paths in order.

    The last shard downloaded is the validation split by convention (see `shards.split_shards`).
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise DownloadError(f"num_shards must be a positive int, got {num_shards!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise DownloadError(f"max_retries must be an int >= 0, got {max_retries!r}")
    try:
        names = [filename_pattern.format(index=index) for index in range(num_shards)]
    except (KeyError, IndexError, ValueError) as exc:
        names, problem = [], f" ({exc})"
    else:
        problem = ""
    if len(set(names)) != num_shards:
        raise DownloadError(
            f"filename pattern {filename_pattern!r} must contain '{{index}}' so that each shard gets its "
            f"own name, e.g. {DEFAULT_FILENAME_PATTERN!r}{problem}"
        )
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    where = f"{repo_type} repo {repo_id}" + (f" at revision {revision}" if revision else "")
    checksums = with_retries(
        lambda: remote_checksums(repo_id, names, repo_type=repo_type, revision=revision),
        max_retries=max_retries,
        describe=f"listing {where}",
        explain=lambda exc: _explain(exc, where),
    )
    paths = []
    for name in tqdm(names, desc=f"shards of {repo_id}", unit="shard", disable=not progress):
        target = folder / name
        checksum = checksums[name]
        if target.is_file() and _matches(target, checksum):
            paths.append(target)
            continue
        with_retries(
            lambda name=name, expected=checksum: _fetch_one(
                repo_id, name, folder, expected, repo_type, revision
            ),
            max_retries=max_retries,
            describe=f"downloading {name} from {where}",
            explain=lambda exc: _explain(exc, where),
        )
        paths.append(target)
    return paths


def remote_checksums(
    repo_id: str, names: list[str], repo_type: str = "dataset", revision: str | None = None
) -> dict[str, Checksum | None]:
    """The checksum the Hub records for each file (None when it has none we can check, e.g. Xet-only)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    found: dict[str, Checksum | None] = {}
    for start in range(0, len(names), PATHS_PER_REQUEST):
        batch = names[start : start + PATHS_PER_REQUEST]
        for info in api.get_paths_info(repo_id, batch, expand=True, revision=revision, repo_type=repo_type):
            if not isinstance(info, RepoFile):
                continue
            if info.lfs is not None:
                found[info.path] = Checksum("sha256", info.lfs.sha256)
            elif getattr(info, "xet_hash", None):
                found[info.path] = None  # its git blob id describes a pointer, not the bytes
            else:
                found[info.path] = Checksum("git-blob-sha1", info.blob_id)
    missing = [name for name in names if name not in found]
    if missing:
        raise DownloadError(
            f"{repo_id} has no file {missing[0]!r}"
            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
            + "; ask for fewer shards or check the filename pattern and repo type"
        )
    return found


def file_checksum(path: str | os.PathLike[str], algorithm: str) -> str:
    """A local file's checksum in one of the `Checksum` algorithms."""
    if algorithm == "sha256":
        return sha256_file(path)
    if algorithm == "git-blob-sha1":  # git hashes "blob <size>\0" + content
        digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    raise DownloadError(f"unknown checksum algorithm {algorithm!r}")


def verify_checksum(path: str | os.PathLike[str], checksum: Checksum | None) -> None:
    """Raise `ChecksumError` (after deleting the file) when `path` does not hash to `checksum`."""
    if checksum is None:
        log.warning("%s: the Hub records no checksum this code can verify; not verified", path)
        return
    actual = file_checksum(path, checksum.algorithm)
    if actual != checksum.value:
        Path(path).unlink(missing_ok=True)
        raise ChecksumError(
            f"{path}: {checksum.algorithm} is {actual}, the Hub says {checksum.value}; the damaged file "
            "was deleted, run the download again"
        )


def with_retries(
    call: Callable[[], T],
    *,
    max_retries: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    is_transient: Callable[[BaseException], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    describe: str = "request",
    explain: Callable[[BaseException], DownloadError | None] | None = None,
) -> T:
    """Call `call()`; on a transient failure wait base_delay * 2**attempt (capped) and try again.

    After `max_retries` retries, or at once for a permanent failure, raise `DownloadError` whose message
    is `explain(exc)` when that gives one, else says what failed. A `DownloadError` from `call` is passed
    through (a `ChecksumError` counts as transient: the download is tried again).
    """
    transient = is_transient or is_transient_error
    for attempt in range(max_retries + 1):
        try:
            return call()
        except Exception as exc:
            retry = attempt < max_retries and transient(exc)
            if not retry:
                if isinstance(exc, DownloadError):
                    raise
                explained = explain(exc) if explain else None
                attempts = f" after {attempt + 1} attempts" if attempt else ""
                raise explained or DownloadError(
                    f"{describe} failed{attempts}: {type(exc).__name__}: {exc}"
                ) from exc
            delay = min(max_delay, base_delay * 2**attempt)
            log.warning(
                "%s failed (%s); retry %d/%d in %.0fs", describe, exc, attempt + 1, max_retries, delay
            )
            sleep(delay)
    raise AssertionError("unreachable")


def is_transient_error(exc: BaseException) -> bool:
    """Worth retrying: a network failure, a timeout, a 408/429/5xx answer, or a damaged download.
    Never when the Hub is switched off (HF_HUB_OFFLINE) or the answer was a definite no (404, 401...)."""
    chain = list(_exception_chain(exc))
    if any(type(e).__name__ == "OfflineModeIsEnabled" for e in chain):
        return False
    for error in chain:
        if isinstance(error, (ChecksumError, TimeoutError, *_network_errors())):
            return True
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) in RETRY_STATUS_CODES:
            return True
    return False


def _fetch_one(
    repo_id: str, name: str, folder: Path, checksum: Checksum | None, repo_type: str, revision: str | None
) -> None:
    from huggingface_hub import hf_hub_download

    target = folder / name
    force = target.exists()  # present but wrong: do not let the local metadata vouch for it
    target.unlink(missing_ok=True)
    downloaded = hf_hub_download(
        repo_id,
        name,
        repo_type=repo_type,
        revision=revision,
        local_dir=folder,
        force_download=force,
    )
    if Path(downloaded).resolve() != target.resolve():
        os.replace(downloaded, target)
    verify_checksum(target, checksum)


def _matches(path: Path, checksum: Checksum | None) -> bool:
    return checksum is not None and file_checksum(path, checksum.algorithm) == checksum.value


def _explain(exc: BaseException, where: str) -> DownloadError | None:
    """An actionable message for the Hub failures a user can fix."""
    names = {type(e).__name__ for e in _exception_chain(exc)}
    if "OfflineModeIsEnabled" in names:
        return DownloadError(
            f"cannot reach the Hugging Face Hub for {where}: offline mode is on (HF_HUB_OFFLINE); unset it, "
            "or copy the shards into the output folder yourself"
        )
    if "GatedRepoError" in names:
        return DownloadError(f"{where} is gated: accept its terms on huggingface.co and set HF_TOKEN")
    if "RepositoryNotFoundError" in names:
        return DownloadError(
            f"{where} was not found (or is private): check the repo id and --repo-type, or set HF_TOKEN"
        )
    if "RevisionNotFoundError" in names:
        return DownloadError(f"{where}: no such revision")
    if names & {"EntryNotFoundError", "RemoteEntryNotFoundError", "LocalEntryNotFoundError"}:
        return DownloadError(
            f"cannot download from {where}: {exc}; check your network connection (and HF_ENDPOINT)"
        )
    return None


def _exception_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@functools.cache
def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of the HTTP clients huggingface_hub may use (not HTTP answers)."""
    types: list[type[BaseException]] = [ConnectionError]
    candidates = (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    )
    for module, name in candidates:
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(types)
