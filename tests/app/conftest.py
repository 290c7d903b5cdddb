"""Fixtures shared by the app's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No NANOCHAT_*, HOST or PORT from this process, and no `.env` (a folder without one): the settings
    a test parses are its own flags and variables and the defaults."""
    for name in list(os.environ):
        if name.startswith("NANOCHAT_") or name in ("HOST", "PORT", "WEB_CONCURRENCY", "MODEL_BACKEND"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch
