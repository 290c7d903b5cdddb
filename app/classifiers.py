"""Loading a registered scikit-learn model: the read side of the model registry (`ROOT/<name>/<version>/`).

A version folder holds `model.skops` (the fitted pipeline, written with skops: a format that stores
objects as data, so loading never runs pickled code) and `metadata.json` (name, version, the model file's
SHA-256, metrics, library versions). `load` refuses a model file whose SHA-256 differs from the one
recorded, and a file that holds types outside scikit-learn, numpy and scipy, before anything is
deserialized. The classifier of `POST /v1/classify` and the guardrail (app/guardrail.py) load through here.

It deliberately trains and writes nothing: the learning track `tracks.classify` writes the folders
(`tracks.classify.registry.save`). It imports no torch and nothing else of the service, because the
classifier's worker processes (app/pool_worker.py) import it. scikit-learn and skops come from the
`guardrail` extra; where they are missing, `load` raises a `RegistryError` that says what to install.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanochat.files import sha256_file

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
VERSION = re.compile(r"^v([1-9][0-9]*)$")
# Types a model file may contain: everything else makes `load` refuse the file.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.", "builtins.", "collections.OrderedDict")
EXTRA = "guardrail"  # the pyproject.toml extra that installs scikit-learn and skops


class RegistryError(ValueError):
    """A model folder that cannot be loaded or trusted; the message says what is wrong."""


@dataclass
class LoadedModel:
    model: Any
    metadata: dict[str, Any]
    directory: Path

    @property
    def version(self) -> str:
        return self.metadata["version"]


def versions(root: str | os.PathLike[str], name: str) -> list[str]:
    """The versions of `name` under `root`, oldest first (v2 before v10)."""
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name) for p in folder.iterdir() if p.is_dir() and (m := VERSION.match(p.name))
    ]
    return [name for _, name in sorted(found)]


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


def _skops_io() -> Any:
    """skops.io, or a RegistryError naming the extra to install (the base install serves chat only)."""
    try:
        import sklearn  # noqa: F401  (a model file is a scikit-learn pipeline: skops alone cannot load it)
        import skops.io as sio
    except ModuleNotFoundError as e:
        raise RegistryError(
            f"loading a scikit-learn model needs scikit-learn and skops ({e.name} is not installed): "
            f"pip install 'nanochat-service[{EXTRA}]'"
        ) from None
    return sio


def load(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model version (or a model's latest version), after checking its hash and its types."""
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
    sio = _skops_io()
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
