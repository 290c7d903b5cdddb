"""The model registry: versions, metadata, and refusing files that changed or hold foreign types."""

from __future__ import annotations

import fractions
import json

import pytest

from tracks.classify import registry
from tracks.classify.pipelines import build_pipeline, compact
from tracks.classify.registry import METADATA_FILE, MODEL_FILE, RegistryError


@pytest.fixture(scope="module")
def fitted(guardrail_data):
    return compact(build_pipeline("logreg", "words").fit(guardrail_data.texts, guardrail_data.labels))


def test_save_then_load_gives_the_same_predictions(fitted, guardrail_data, tmp_path):
    folder = registry.save(fitted, tmp_path, "guard", {"dataset": {"sha256": guardrail_data.sha256()}})
    assert folder == tmp_path / "guard" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == [METADATA_FILE, MODEL_FILE]
    loaded = registry.load(folder)
    assert list(loaded.model.predict(guardrail_data.texts)) == list(fitted.predict(guardrail_data.texts))
    meta = loaded.metadata
    assert (meta["name"], meta["version"], meta["dataset"]["sha256"]) == (
        "guard",
        "v1",
        guardrail_data.sha256(),
    )
    assert set(meta["libraries"]) == {"python", "scikit-learn", "skops", "numpy"}
    assert meta["created"].endswith("+00:00")


def test_versions_count_up_and_the_model_folder_means_its_latest(fitted, tmp_path):
    for _ in range(2):
        registry.save(fitted, tmp_path, "m", {})
    registry.save(fitted, tmp_path, "m", {}, version="v10")
    assert registry.versions(tmp_path, "m") == ["v1", "v2", "v10"]  # numeric order, not text order
    assert registry.next_version(tmp_path, "m") == "v11"
    assert registry.load(tmp_path / "m").version == "v10"


def test_a_version_is_never_overwritten(fitted, tmp_path):
    registry.save(fitted, tmp_path, "m", {}, version="v1")
    with pytest.raises(RegistryError, match="already exists; versions are never overwritten"):
        registry.save(fitted, tmp_path, "m", {}, version="v1")


@pytest.mark.parametrize(
    ("name", "version"), [("Bad Name", None), ("../up", None), ("ok", "1.0"), ("ok", "v0")]
)
def test_bad_names_and_versions_are_refused(fitted, tmp_path, name, version):
    with pytest.raises(RegistryError):
        registry.save(fitted, tmp_path, name, {}, version=version)
    assert not any(tmp_path.rglob(MODEL_FILE))


def test_a_changed_model_file_is_refused(fitted, tmp_path):
    folder = registry.save(fitted, tmp_path, "m", {})
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="the file was changed or damaged; refusing to load it"):
        registry.load(folder)


def test_a_file_with_foreign_types_is_refused_even_with_a_matching_hash(tmp_path):
    import skops.io as sio

    folder = tmp_path / "evil" / "v1"
    folder.mkdir(parents=True)
    sio.dump({"f": fractions.Fraction(1, 3)}, folder / MODEL_FILE)  # a type outside sklearn/numpy/scipy
    from nanochat.files import sha256_file

    meta = {"name": "evil", "version": "v1", "model_sha256": sha256_file(folder / MODEL_FILE)}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        RegistryError, match=r"holds types outside scikit-learn/numpy/scipy: \['fractions.Fraction'\]"
    ):
        registry.load(folder)


def test_missing_or_broken_folders_are_clear_errors(tmp_path):
    with pytest.raises(RegistryError, match="is not a model version folder"):
        registry.load(tmp_path / "nothing")
    folder = tmp_path / "m" / "v1"
    folder.mkdir(parents=True)
    (folder / METADATA_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match="is not readable JSON"):
        registry.load(folder)
    (folder / METADATA_FILE).write_text("{}")
    with pytest.raises(RegistryError, match=r"model\.skops is missing"):
        registry.load(folder)
