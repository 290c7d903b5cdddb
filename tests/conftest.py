"""Shared pytest fixtures.

The reference fixtures (checkpoints and expected outputs written by the public nanochat code) live in
`../shared/fixtures/nanochat-ref`, outside this repository. Tests reach them only through `reference_dir`,
which skips with a reason when the folder is absent, and never write there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_root() -> Path:
    override = os.environ.get("NANOCHAT_REF_FIXTURES")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "fixtures" / "nanochat-ref"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The nanochat reference fixture folder (read-only); skips when it is not on this machine."""
    root = _reference_root()
    if not (root / "modelA" / "expected.json").is_file():
        pytest.skip(f"nanochat reference fixtures not found at {root} (set NANOCHAT_REF_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def expected(reference_dir: Path) -> dict:
    """modelA/expected.json: outputs computed by the public nanochat code."""
    return json.loads((reference_dir / "modelA" / "expected.json").read_text())
