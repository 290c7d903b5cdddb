"""Training checkpoints mirrored to a Cloud Storage bucket (`--bucket gs://BUCKET/PREFIX`).

The trainer always writes its checkpoint folder locally first; this module copies each finished step's
files up (optimizer state, then model, then meta: the meta object marks the step complete, as on disk),
deletes the steps the local folder pruned, and, for a resume on a machine whose folder is empty, brings the
bucket's latest complete step down. It talks to GCS through `google-cloud-storage` (the `gcs` extra);
`STORAGE_EMULATOR_HOST` points that client at a local emulator, as the tests do. Nothing here knows about
models or optimizers: only file names of the nanochat checkpoint layout.
"""

from __future__ import annotations

import re
from pathlib import Path

from nanochat.checkpoint import MODEL_FILE, CheckpointError, meta_path, model_path, optimizer_path
from nanochat.files import temporary_path

BUCKET_URL = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(?:/(.*))?$")
META_FILE = re.compile(r"^meta_(\d{6,})\.json$")


def parse_bucket_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of `gs://bucket/prefix` (prefix may be empty); CheckpointError otherwise."""
    match = BUCKET_URL.match(url)
    if not match:
        raise CheckpointError(f"--bucket must look like gs://BUCKET[/PREFIX], got {url!r}")
    prefix = (match.group(2) or "").strip("/")
    return match.group(1), f"{prefix}/" if prefix else ""


class BucketMirror:
    """The checkpoint files of one run folder, mirrored under `gs://bucket/prefix/`."""

    def __init__(self, url: str, client=None) -> None:
        self.url = url
        self.bucket_name, self.prefix = parse_bucket_url(url)
        if client is None:
            try:
                from google.cloud import storage
            except ImportError:
                raise CheckpointError(
                    f"{url} needs google-cloud-storage: pip install 'nanochat-service[gcs]'"
                ) from None
            client = storage.Client()
        self.bucket = client.bucket(self.bucket_name)

    def _blob(self, name: str):
        return self.bucket.blob(self.prefix + name)

    def upload_step(self, directory: Path, step: int, rank: int = 0) -> None:
        """This rank's optimizer file, then (rank 0) the model and the meta last."""
        files = [optimizer_path(directory, step, rank)]
        if rank == 0:
            files += [model_path(directory, step), meta_path(directory, step)]
        for path in files:
            if path.is_file():
                self._blob(path.name).upload_from_filename(str(path))

    def delete_step(self, step: int) -> None:
        """The step's objects, meta first (so a half-deleted step never looks complete)."""
        names = [f"meta_{step:06d}.json", f"model_{step:06d}.pt"]
        names += [b.name.removeprefix(self.prefix) for b in self._list(f"optim_{step:06d}_rank")]
        for name in names:
            blob = self._blob(name)
            if blob.exists():
                blob.delete()

    def complete_steps(self) -> list[int]:
        """Steps with both a model and a meta object, ascending."""
        names = {b.name.removeprefix(self.prefix) for b in self._list("")}
        metas = {int(m.group(1)) for n in names if (m := META_FILE.match(n))}
        models = {int(m.group(1)) for n in names if (m := MODEL_FILE.match(n))}
        return sorted(metas & models)

    def download_latest(self, directory: Path, rank: int = 0) -> int | None:
        """Bring the latest complete step's model, meta and this rank's optimizer file into `directory`
        (each through a temporary file and a rename); returns the step, or None if the bucket has none."""
        steps = self.complete_steps()
        if not steps:
            return None
        step = steps[-1]
        directory.mkdir(parents=True, exist_ok=True)
        for path in (
            optimizer_path(directory, step, rank),
            model_path(directory, step),
            meta_path(directory, step),
        ):
            blob = self._blob(path.name)
            if not blob.exists():
                continue  # no optimizer state (e.g. a checkpoint written without one)
            tmp = temporary_path(path)
            try:
                blob.download_to_filename(str(tmp))
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        return step

    def _list(self, start: str):
        return self.bucket.client.list_blobs(self.bucket_name, prefix=self.prefix + start)
