"""A small local model registry: one folder per model version, `ROOT/<name>/<version>/`.

Each version folder holds
- `model.skops`: the fitted scikit-learn pipeline, written with skops (a format that stores objects as
  data; loading never runs pickled code);
- `metadata.json`: name, version, created (UTC), the model file's SHA-256, the training data's hash and
  description, the metrics, and the versions of Python, scikit-learn, skops and numpy that wrote it;
- whatever the trainer adds beside them (report.md, report.json, confusion.png).

Versions are `v1`, `v2`, ...; a version, once written, is never overwritten. `load` refuses a model file
whose SHA-256 differs from the one recorded, and a file that holds types outside scikit-learn, numpy and
scipy. It deliberately does not sync to remote storage: the folder can be copied or baked into an image.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nanochat.files import sha256_file, write_text_atomically

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
DEFAULT_ROOT = Path("models")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION = re.compile(r"^v([1-9][0-9]*)$")
# Types a model file may contain: everything else makes `load` refuse the file.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.", "builtins.", "collections.OrderedDict")


class RegistryError(ValueError):
    """A model folder that cannot be written or trusted; the message says what is wrong."""


@dataclass
class LoadedModel:
    model: Any
    metadata: dict[str, Any]
    directory: Path

    @property
    def version(self) -> str:
        return self.metadata["version"]


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


def versions(root: str | os.PathLike[str], name: str) -> list[str]:
    """The versions of `name` under `root`, oldest first (v2 before v10)."""
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name) for p in folder.iterdir() if p.is_dir() and (m := VERSION.match(p.name))
    ]
    return [name for _, name in sorted(found)]


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


def resolve(path: str | os.PathLike[str]) -> Path:
    """A version folder from `ROOT/name/version` or `ROOT/name` (its latest version)."""
    folder = Path(path)
    if (folder / METADATA_FILE).is_file():
        return folder
    if folder.is_dir():
        found = versions(folder.parent, folder.name)
        if found:
            return folder / found[-1]
    raise RegistryError(
        f"{folder} is not a model version folder (no {METADATA_FILE}) nor a model with versions v1, v2, ..."
    )


def load(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model version (or a model's latest version), after checking its hash and its types."""
    import skops.io as sio

    folder = resolve(path)
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{folder / METADATA_FILE} is not readable JSON ({exc})") from None
    model_file = folder / metadata.get("model_file", MODEL_FILE)
    if not model_file.is_file():
        raise RegistryError(f"{model_file} is missing")
    expected = metadata.get("model_sha256")
    actual = sha256_file(model_file)
    if actual != expected:
        raise RegistryError(
            f"{model_file} has SHA-256 {actual}, but {METADATA_FILE} records {expected}: the file was "
            "changed or damaged; refusing to load it"
        )
    try:
        untrusted = sio.get_untrusted_types(file=model_file)
    except Exception as exc:  # a damaged or foreign file: skops raises many kinds
        raise RegistryError(
            f"{model_file} is not a readable skops file ({type(exc).__name__}: {exc})"
        ) from None
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise RegistryError(f"{model_file} holds types outside scikit-learn/numpy/scipy: {foreign}; refusing")
    model = sio.load(model_file, trusted=untrusted)
    return LoadedModel(model, metadata, folder)
