"""modules/budget.py on a small synthesized stack: the Pub/Sub topic is declared only when given."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # importing the provider bindings takes seconds

TOPIC = "projects/nanochat-test/topics/nanochat-budget-dev"


@pytest.fixture(scope="module")
def budgets() -> dict[str, dict]:
    """Two budgets, by display name: `nanochat plain` without a topic, `nanochat kill` with one."""
    from cdktf import TerraformStack
    from cdktf import Testing as T

    from modules.budget import Budget
    from modules.inputs import BudgetInput

    stack = TerraformStack(T.app(), "unit")
    spec = BudgetInput(
        billing_account="01A2B3-C4D5E6-F7A8B9",
        amount=50,
        currency="EUR",
        actual_thresholds=[0.5, 1.0],
        forecast_thresholds=[1.0],
    )
    common = {
        "project_number": "123456789",
        "notification_channel_ids": ["projects/nanochat-test/notificationChannels/1"],
    }
    Budget(stack, "plain", spec, env="plain", **common)
    Budget(stack, "kill", spec, env="kill", pubsub_topic=TOPIC, **common)
    synth = json.loads(T.synth(stack))
    found = synth["resource"]["google_billing_budget"].values()
    return {b["display_name"]: b for b in found}


def test_a_budget_given_a_topic_publishes_to_it(budgets):
    rule = budgets["nanochat kill"]["all_updates_rule"]
    assert rule["pubsub_topic"] == TOPIC
    assert rule["schema_version"] == "1.0"
    assert rule["monitoring_notification_channels"] == ["projects/nanochat-test/notificationChannels/1"]


def test_a_budget_without_a_topic_declares_none(budgets):
    rule = budgets["nanochat plain"]["all_updates_rule"]
    assert "pubsub_topic" not in rule and "schema_version" not in rule
    assert rule["monitoring_notification_channels"] == ["projects/nanochat-test/notificationChannels/1"]
