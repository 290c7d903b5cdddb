"""The guardrail's evaluation on labeled texts (rules, classifier, both; a threshold sweep), as the
training report writes it."""

from __future__ import annotations

import pytest

from app.guardrail import Guardrail
from tests.app.test_guardrail import ATTACKS, BENIGN
from tracks.classify.guardrail import evaluate_screen


@pytest.fixture(scope="module")
def guardrail() -> Guardrail:
    return Guardrail.load()


def test_screen_evaluation_counts_rules_model_and_both(guardrail):
    texts = [t for t, _ in ATTACKS] + BENIGN
    labels = ["injection"] * len(ATTACKS) + ["benign"] * len(BENIGN)
    result = evaluate_screen(guardrail, texts, labels)
    assert result["rules"]["caught"] == sum(r is not None for _, r in ATTACKS)
    assert result["combined"]["recall"] == 1.0 and result["combined"]["false_positive_rate"] == 0.0
    assert [row["threshold"] for row in result["model_threshold_sweep"]] == sorted(
        row["threshold"] for row in result["model_threshold_sweep"]
    )
