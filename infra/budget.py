"""A monthly cost budget on the resource group, with e-mail alerts."""

import datetime as dt
import re

import pulumi
from pulumi_azure_native import consumption, resources

from infra.config import StackConfig


def declare_budget(cfg: StackConfig, resource_group: resources.ResourceGroup) -> consumption.Budget:
    # Azure wants the first of a month, no earlier than the current period; the default is the
    # current month at creation, and later runs must not move it (ignore_changes below).
    start = cfg.budget_start_date or dt.date.today().replace(day=1)
    notifications = {}
    for threshold in cfg.budget_thresholds:
        # Keys named the way the portal names them.
        key = f"Actual_GreaterThanOrEqualTo_{threshold:g}_Percent".replace(".", "_")
        notifications[key] = consumption.NotificationArgs(
            enabled=True,
            operator=consumption.OperatorType.GREATER_THAN_OR_EQUAL_TO,
            threshold=threshold,
            threshold_type=consumption.ThresholdType.ACTUAL,
            contact_emails=cfg.budget_contact_emails,
            # Owners of the group hear about it too, even if the list above goes stale.
            contact_roles=["Owner"],
        )
    return consumption.Budget(
        "budget",
        # Budget names allow letters, digits, - and _ (63 at most).
        budget_name=re.sub(r"[^A-Za-z0-9_-]", "-", f"budget-{cfg.resource_group_name}")[:63],
        scope=resource_group.id,
        amount=cfg.budget_amount,
        category=consumption.CategoryType.COST,
        time_grain=consumption.TimeGrainType.MONTHLY,
        time_period=consumption.BudgetTimePeriodArgs(start_date=f"{start.isoformat()}T00:00:00Z"),
        notifications=notifications,
        opts=pulumi.ResourceOptions(ignore_changes=["timePeriod"]),
    )
