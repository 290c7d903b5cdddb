"""Labeled datasets: fortune parsing, JSONL loading and its errors, the stratified split, provenance."""

from __future__ import annotations

import json
import shutil

import pytest

from tracks.classify.dataset import (
    FORTUNE_CATEGORIES,
    DatasetError,
    LabeledTexts,
    load_dataset,
    load_fortunes,
    load_jsonl,
    split_fortunes,
    stratified_split,
)


def test_fortune_entries_split_at_percent_lines_without_attributions():
    text = (
        'First one.\n%\nSecond,\non two lines.\n\t\t-- Author, "Work",\n\t\t   stardate 12.\n%\n\n%\n'
        "Dialogue:\n-- not an attribution, it is the middle\nEnd.\n%\n"
    )
    assert split_fortunes(text) == [
        "First one.",
        "Second,\non two lines.",
        "Dialogue:\n-- not an attribution, it is the middle\nEnd.",
    ]


def test_fortunes_from_a_deb_in_the_cache(fortunes_deb):
    data = load_fortunes(fortunes_deb)
    assert data.counts() == {category: 300 for category in FORTUNE_CATEGORIES}
    assert "cookie" not in data.classes  # grab-bag files are not classes
    assert all("Someone" not in text for text in data.texts)  # attributions removed
    described = data.describe()
    assert described["examples"] == 3000
    assert described["package"] == "debian:fortunes"
    assert len(described["package_sha256"]) == 64
    assert "BSD" in described["licence"]


def test_a_deb_without_the_licence_sentence_is_refused(fortunes_deb, tmp_path):
    import subprocess

    root = tmp_path / "root"
    subprocess.run(
        ["dpkg-deb", "-R", str(next((fortunes_deb / "fortunes").glob("*.deb"))), str(root)], check=True
    )
    (root / "usr/share/doc/fortunes/copyright").write_text("All rights reserved.\n")
    cache = tmp_path / "cache"
    (cache / "fortunes").mkdir(parents=True)
    deb = cache / "fortunes/fortunes_2.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    with pytest.raises(DatasetError, match="no longer says 'This program falls under the BSD copyright'"):
        load_fortunes(cache)


@pytest.mark.slow
@pytest.mark.integration
def test_real_fortunes_package_from_debian(tmp_path):
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the fortunes are a Debian package")
    data = load_fortunes(tmp_path)
    counts = data.counts()
    assert set(counts) == set(FORTUNE_CATEGORIES)
    assert 4500 < len(data.texts) < 6000, counts  # 5,065 in fortunes 1:1.99.1-7.3 (Debian 12)
    assert counts["computers"] > 900 and counts["sports"] > 100


def test_jsonl_loads_and_hashes_content(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "hello", "label": "a"}, {"text": "bye", "label": "b", "extra": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = load_jsonl(path)
    assert (data.name, data.texts, data.labels) == ("data", ["hello", "bye"], ["a", "b"])
    relabelled = LabeledTexts("x", ["hello", "bye"], ["a", "a2"])
    assert data.sha256() == LabeledTexts("other", ["hello", "bye"], ["a", "b"]).sha256()  # content, not name
    assert data.sha256() != relabelled.sha256()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"text": "a", "label": "x"}\nnot json\n', r"data.jsonl:2: not valid JSON"),
        ('{"text": "", "label": "x"}\n', r"data.jsonl:1: 'text' must be a non-empty string"),
        ('{"text": "a"}\n', r"data.jsonl:1: 'label' must be a non-empty string"),
        ('["text", "label"]\n', r"data.jsonl:1: 'text' must be a non-empty string"),
        ("\n\n", r"data: no examples"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', r"at least two labels"),
    ],
)
def test_bad_jsonl_is_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=problem):
        load_jsonl(path)


def test_unknown_dataset_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(DatasetError, match="labeled JSONL file not found"):
        load_dataset(str(tmp_path / "missing.jsonl"))


def test_stratified_split_is_deterministic_and_keeps_proportions(guardrail_data):
    train, test = stratified_split(guardrail_data, 0.2, seed=3)
    again_train, again_test = stratified_split(guardrail_data, 0.2, seed=3)
    assert test.texts == again_test.texts and train.texts == again_train.texts
    assert not set(train.texts) & set(test.texts)
    assert len(train.texts) + len(test.texts) == len(guardrail_data.texts)
    for label, n in guardrail_data.counts().items():
        assert abs(test.counts()[label] - 0.2 * n) <= 1
    other_train, _ = stratified_split(guardrail_data, 0.2, seed=4)
    assert other_train.texts != train.texts


def test_split_needs_two_examples_per_class():
    data = LabeledTexts("tiny", ["a", "b", "c"], ["x", "x", "y"])
    with pytest.raises(DatasetError, match="at least 2 examples"):
        stratified_split(data)
    with pytest.raises(DatasetError, match="test_fraction"):
        stratified_split(LabeledTexts("t", ["a", "b", "c", "d"], ["x", "x", "y", "y"]), 1.5)


def test_guardrail_set_is_balanced_and_documented(guardrail_data):
    counts = guardrail_data.counts()
    assert set(counts) == {"benign", "injection"}
    assert abs(counts["benign"] - counts["injection"]) <= 0.1 * len(guardrail_data.texts)
    assert len(set(guardrail_data.texts)) == len(guardrail_data.texts)  # no duplicates
    assert "written" in guardrail_data.source["title"]
