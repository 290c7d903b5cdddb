"""A small local model registry: one folder per model version, `ROOT/<name>/<version>/`.

Each version folder holds
- `model.skops`: the fitted scikit-learn pipeline, written with skops (a format that stores objects as
  data; loading never runs pickled code);
- `metadata.json`: name, version, created (UTC), the model file's SHA-256, the training data's hash and
  description, the metrics, and the versions of Python, scikit-learn, skops and numpy that wrote it;
- whatever the trainer adds beside them (report.md, report.json, confusion.png).

Versions are `v1`, `v2`, ...; a version, once written, is never overwritten. This module is the write
side; reading (`load`, `resolve`, `versions`: the SHA-256 and type checks) is the service's
(app/classifiers.py) and is re-exported here, so a trainer uses one module for both. It deliberately
does not sync to remote storage: the folder can be copied or baked into an image.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.classifiers import (
    METADATA_FILE,
    MODEL_FILE,
    VERSION,
    LoadedModel,
    RegistryError,
    load,
    resolve,
    versions,
)
from nanochat.files import sha256_file, write_text_atomically

__all__ = [
    "DEFAULT_ROOT",
    "METADATA_FILE",
    "MODEL_FILE",
    "LoadedModel",
    "RegistryError",
    "check_name",
    "library_versions",
    "load",
    "next_version",
    "resolve",
    "save",
    "versions",
]
DEFAULT_ROOT = Path("models")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def library_versions() -> dict[str, str]:
    import numpy
    import sklearn
    import skops

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
        "numpy": numpy.__version__,
    }


def next_version(root: str | os.PathLike[str], name: str) -> str:
    existing = versions(root, name)
    return f"v{int(existing[-1][1:]) + 1}" if existing else "v1"


def check_name(name: str, version: str | None = None) -> None:
    """Raise RegistryError for a model name or version tag the registry would refuse."""
    if not NAME.match(name):
        raise RegistryError(f"model name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
    if version is not None and not VERSION.match(version):
        raise RegistryError(f"version {version!r}: versions are v1, v2, ...")


def save(
    model: Any,
    root: str | os.PathLike[str],
    name: str,
    metadata: dict[str, Any],
    version: str | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write `model` as ROOT/name/version (the next free version by default); returns the folder.

    The folder is assembled under a temporary name and renamed into place, so a half-written version is
    never visible. `extra_files` (file name -> existing path) are copied in beside the model.
    """
    import skops.io as sio

    check_name(name, version)
    version = version or next_version(root, name)
    target = Path(root) / name / version
    if target.exists():
        raise RegistryError(f"{target} already exists; versions are never overwritten (pick another)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        sio.dump(model, staging / MODEL_FILE, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
        for file_name, path in (extra_files or {}).items():
            shutil.copyfile(path, staging / file_name)
        record = {
            "name": name,
            "version": version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_file": MODEL_FILE,
            "model_sha256": sha256_file(staging / MODEL_FILE),
            "libraries": library_versions(),
            **metadata,
        }
        write_text_atomically(
            staging / METADATA_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        )
        staging.chmod(0o755)  # mkdtemp makes it owner-only; a model is read by other users (containers)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
