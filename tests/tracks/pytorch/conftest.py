"""The exercises train tiny models: one torch thread is faster, and much faster on shared cores."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread) -> None:
    """Every module here on one torch thread (tests/conftest.py's `one_torch_thread`)."""
