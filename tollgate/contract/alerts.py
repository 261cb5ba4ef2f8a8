"""Alerts: what the stream tells people about, on the alerts topic and to webhooks."""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

import msgspec

from tollgate.contract.budgets import Dimension, ThresholdPct
from tollgate.contract.record import Name, Record, UtcDatetime, require_non_negative_usd


class AlertKind(StrEnum):
    BUDGET_THRESHOLD = "budget_threshold"
    """A budget's spend crossed one of its thresholds."""
    COST_ANOMALY = "cost_anomaly"
    """A subject's cost rate left its learned baseline."""
    NEW_SPENDER = "new_spender"
    """A key or model never seen before appeared with high spend."""
    UNPRICED_MODEL = "unpriced_model"
    """A model not in the price catalog was priced at the fallback price."""
    QUALITY_REGRESSION = "quality_regression"
    """A model's or backend's share of answers judged bad left its learned baseline."""


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(Record, tag=1, kw_only=True):
    """One incident, said once (the stream applies a cooldown per subject and kind)."""

    alert_id: uuid.UUID
    kind: AlertKind
    severity: Severity
    time: UtcDatetime
    subject: str
    scope: dict[Dimension, Name]
    summary: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    budget_id: Name | None = None
    threshold_pct: ThresholdPct | None = None
    spent_usd: Decimal | None = None
    limit_usd: Decimal | None = None
    expected_usd: Decimal | None = None
    actual_usd: Decimal | None = None
    impact_usd: Decimal | None = None
    """Spend above expectation, in USD."""
    score: float | None = None
    since: UtcDatetime | None = None

    def __post_init__(self) -> None:
        for field in ("spent_usd", "limit_usd", "expected_usd", "actual_usd"):
            require_non_negative_usd(self, field, getattr(self, field))
