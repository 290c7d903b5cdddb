"""Fixtures for the classify tests: the curated guardrail set (real, in the repo) and a fortunes .deb."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tracks.classify.dataset import FORTUNE_CATEGORIES, LabeledTexts, load_guardrail_data


@pytest.fixture(scope="session")
def guardrail_data() -> LabeledTexts:
    return load_guardrail_data()


@pytest.fixture(scope="session")
def fortunes_deb(tmp_path_factory) -> Path:
    """A cache folder holding a `fortunes` .deb built here with dpkg-deb: the Debian layout, a copyright
    file with the BSD sentence, 300 fortunes per category, each with an attribution to strip."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (apt-get install -y dpkg); it builds and reads .deb packages")
    root = tmp_path_factory.mktemp("fortunes-root")
    games = root / "usr/share/games/fortunes"
    games.mkdir(parents=True)
    for category in FORTUNE_CATEGORIES:
        entries = [f"A saying about {category} number {i}.\n\t\t-- Someone {i}" for i in range(300)]
        (games / category).write_text("\n%\n".join(entries) + "\n%\n")
    (games / "cookie").write_text("not a topic file\n%\n")
    doc = root / "usr/share/doc/fortunes"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Legal information\n\nThis program falls under the BSD\ncopyright:\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: fortunes\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@example.com>\n"
        "Description: test package\n"
    )
    cache = tmp_path_factory.mktemp("cache")
    (cache / "fortunes").mkdir()
    subprocess.run(
        [
            "dpkg-deb",
            "--root-owner-group",
            "--build",
            str(root),
            str(cache / "fortunes" / "fortunes_1.0_all.deb"),
        ],
        check=True,
        capture_output=True,
    )
    return cache
