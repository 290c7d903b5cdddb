"""Fixtures shared by the app's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
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


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    """The official client on the module's server (`base_url`), no retries."""
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    """Plain HTTP to the module's server, for what the client cannot send."""
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c
