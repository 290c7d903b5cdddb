"""What runs inside the worker processes of a side route's process pool (app/admission.py): the pool's
initializer and the classifier's job. A worker imports this module and nothing else of the service (not
FastAPI, not the app, not torch), so it starts in about a second and holds about 200 MB.

- `start(nice, initializer, *initargs)`, every pool's initializer: lowers the process's CPU priority by
  `nice` (the server's event loop and scheduler win the cores when they need them), ignores SIGTERM and
  SIGINT (sent to the whole process group, they are the server's to handle), starts a watchdog thread
  that ends the process once its parent has gone (a server killed with SIGKILL leaves no worker behind),
  then runs the route's own initializer: the classifier's loads it once (`preload_classifier`).
- `describe_classifier(path)`, the server's first job at start-up (app/api/classify.py): loads the
  classifier, checks that it gives probabilities, and returns what the server reports (name/version,
  version folder, classes), so that the server itself never loads it.
- `classify(directory, texts)`, the job: the probabilities of every class for each text, as plain lists.
  `directory` is the registry version folder the server loaded and reports (`fortunes/v1`): a worker
  that holds another version (a newer one published since) loads that one, so a worker never answers for
  a model the server does not name.

torch is kept out of the workers: scikit-learn's array-API shim imports it whenever it is installed
(+180 MB and seconds per worker), though a scikit-learn pipeline never uses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PARENT_POLL_S = 1.0  # how often the watchdog looks for the parent
_classifier: tuple[str, Any] | None = None  # (version folder, LoadedModel): this process's, loaded once


class _NoTorch:
    """An import hook that reports torch as not installed (see the module's docstring)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (not in a side-route worker)", name=name)


def start(nice: int, initializer: Callable[..., object] | None = None, *initargs: Any) -> None:
    """A process pool's initializer: lower priority, a parent watchdog, no torch, then the route's own
    `initializer(*initargs)` (the classifier's: `preload_classifier`)."""
    if nice:
        os.nice(nice)  # before the watchdog starts: a thread takes its creator's priority
    # the server decides when a worker ends (the pool's shutdown, or the watchdog): a SIGTERM or Ctrl-C
    # sent to the whole process group (systemd, a terminal) must not kill the jobs of a draining server
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()
    if "torch" not in sys.modules:
        sys.meta_path.insert(0, _NoTorch())
    if initializer is not None:
        initializer(*initargs)


def _watch_parent(parent: int) -> None:
    """End this process when its parent has gone (it is then re-parented, so getppid changes)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def load_classifier(path: str) -> Any:
    """The classifier of a registry folder (a model's latest version, or a version), loaded once: the
    registry's LoadedModel (`.model`, `.metadata`, `.directory`)."""
    global _classifier
    from app import classifiers as registry

    directory = str(registry.resolve(path).resolve())
    if _classifier is None or _classifier[0] != directory:
        _classifier = (directory, registry.load(directory))
    return _classifier[1]


def preload_classifier(path: str) -> None:
    """The classifier's initializer: load it before the first job. A failure is left to that job, which
    reports it as the request's error (failing here would break the pool for every request)."""
    if path:
        with contextlib.suppress(Exception):
            load_classifier(path)


def describe_classifier(path: str) -> dict[str, Any]:
    """Load the classifier of `path` and say what it is: `name` (name/version), `directory` (the version
    folder, absolute) and `classes` (in the order of `classify`'s rows). A model that gives no
    probabilities is refused here, as one that cannot load."""
    from app import classifiers as registry

    loaded = load_classifier(path)
    if not hasattr(loaded.model, "predict_proba"):
        raise registry.RegistryError(
            f"{loaded.directory} gives no probabilities (no predict_proba); serve a model trained with "
            "--model logreg or random_forest"
        )
    return {
        "name": f"{loaded.metadata['name']}/{loaded.version}",
        "directory": str(loaded.directory.resolve()),
        "classes": [str(c) for c in loaded.model.classes_],
    }


def classify(directory: str, texts: list[str]) -> list[list[float]]:
    """Every class's probability for each text (rows in the order of the model's `classes_`)."""
    return load_classifier(directory).model.predict_proba(texts).tolist()
