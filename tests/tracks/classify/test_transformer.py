"""The transformer text classifier (Trainer) on the guardrail set, and its one-table comparison."""

from __future__ import annotations

import json

import pytest
import torch

from app.guardrail import DEFAULT_MODEL
from tests.nanochat.test_hf_export import demo_export
from tracks.classify import registry
from tracks.classify.dataset import DatasetError
from tracks.classify.transformer import comparison_markdown, train_transformer_classifier

pytestmark = pytest.mark.slow  # trains a transformer (and exports the demo model when no other test did)


@pytest.fixture(scope="module")
def trained(guardrail_data, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2M-parameter model: one thread is faster on shared cores
    try:
        out = tmp_path_factory.mktemp("clf")
        return out, train_transformer_classifier(demo_export(), guardrail_data, out, epochs=4, batch_size=16)
    finally:
        torch.set_num_threads(threads)


def test_it_trains_and_beats_always_answering_the_majority(trained):
    out, metrics = trained
    assert metrics["accuracy"] > 0.6  # the majority class is 51%
    assert metrics["train_losses"][-1] < metrics["train_losses"][0]
    assert metrics["test_examples"] == 89 and metrics["parameters"] < 2_000_000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    config = json.loads((out / "config.json").read_text())
    assert set(config["id2label"].values()) == {"benign", "injection"}


def test_one_table_with_both_models(trained):
    _, metrics = trained
    report = json.loads((registry.resolve(DEFAULT_MODEL) / "report.json").read_text())
    table = comparison_markdown(report, metrics)
    assert "| TF-IDF + logreg |" in table and "| transformer (" in table
    with pytest.raises(DatasetError, match="not evaluated on the same data"):
        comparison_markdown(report, {**metrics, "dataset_sha256": "0" * 64})
