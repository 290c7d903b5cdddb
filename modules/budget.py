"""A monthly billing budget for the project, emailed through the monitoring notification channels.

Thresholds on actual spend (by default 50%, 90%, 100%) and on forecast spend (100%) each send one email
when crossed. A budget alerts; it does not stop spending. With `pubsub_topic` it also publishes its state
to that topic (schema 1.0, several times a day), which the kill switch (modules/kill_switch.py) acts on.

Input: `BudgetInput` (billing account, amount, thresholds), the notification channel ids and the topic id.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdktf_cdktf_provider_google.billing_budget import BillingBudget, BillingBudgetThresholdRules
from constructs import Construct

from modules.inputs import BudgetInput


class Budget(Construct):
    """Budget `spec.amount` `spec.currency` per month on `spec.billing_account`, for this project only."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: BudgetInput,
        *,
        env: str,
        project_number: str,
        notification_channel_ids: Sequence[str],
        pubsub_topic: str | None = None,
    ) -> None:
        super().__init__(scope, id_)
        rules = [
            BillingBudgetThresholdRules(threshold_percent=t, spend_basis="CURRENT_SPEND")
            for t in spec.actual_thresholds
        ]
        rules += [
            BillingBudgetThresholdRules(threshold_percent=t, spend_basis="FORECASTED_SPEND")
            for t in spec.forecast_thresholds
        ]
        all_updates: dict = {
            "monitoring_notification_channels": list(notification_channel_ids),
            "disable_default_iam_recipients": False,
        }
        if pubsub_topic:  # `projects/P/topics/T`; the only schema the budget API accepts is 1.0
            all_updates |= {"pubsub_topic": pubsub_topic, "schema_version": "1.0"}
        self.budget = BillingBudget(
            self,
            "budget",
            billing_account=spec.billing_account,
            display_name=f"nanochat {env}",
            amount={"specified_amount": {"currency_code": spec.currency, "units": str(spec.amount)}},
            budget_filter={
                "projects": [f"projects/{project_number}"],
                "calendar_period": "MONTH",
                "credit_types_treatment": "INCLUDE_ALL_CREDITS",
            },
            threshold_rules=rules,
            all_updates_rule=all_updates,
        )
