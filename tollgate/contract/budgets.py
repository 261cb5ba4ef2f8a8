"""Budgets as data: their definitions, and the state the stream keeps for each subject.

A definition's ``scope`` names the dimensions it applies to. A value pins the dimension
(``{"tenant": "acme"}``: acme only); ``"*"`` gives each distinct value its own budget
(``{"tenant": "acme", "team": "*"}``: one budget per team of acme). A *subject* is one
concrete assignment of a scope, such as ``tenant=acme,team=search``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from tollgate.contract.record import (
    Name,
    NonNegativeInt,
    Record,
    UtcDatetime,
    invalid,
    require_non_negative_usd,
)

EACH = "*"
"""A scope value meaning "each distinct value has its own budget"."""


class Dimension(StrEnum):
    """What a budget can be scoped by: usage-event fields, in subject order."""

    TENANT = "tenant"
    TEAM = "team"
    API_KEY = "api_key_id"
    USER = "user"
    MODEL = "request_model"
    PROVIDER = "provider"


_DIMENSION_ORDER = {dimension: i for i, dimension in enumerate(Dimension)}


def subject_key(scope: Mapping[Dimension, str]) -> str:
    """The canonical name of a subject: ``tenant=acme,team=search`` in dimension order.

    Values are percent-encoded so that a ``,`` or ``=`` inside a value cannot forge
    another subject.
    """
    ordered = sorted(scope.items(), key=lambda item: _DIMENSION_ORDER[Dimension(item[0])])
    return ",".join(f"{Dimension(d).value}={quote(v, safe='')}" for d, v in ordered)


class WindowKind(StrEnum):
    ROLLING = "rolling"
    """Sliding: the last ``size_s`` seconds before now, e.g. tokens per minute."""
    CALENDAR = "calendar"
    """Tumbling on the calendar: this day, week (from Monday) or month, in a time zone."""


class CalendarUnit(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class BudgetWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The period a budget's spend is counted over."""

    kind: WindowKind
    size_s: Annotated[int, msgspec.Meta(gt=0)] | None = None
    unit: CalendarUnit | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.kind is WindowKind.ROLLING and (self.size_s is None or self.unit is not None):
            raise ValueError("a rolling window takes `size_s` and no `unit`")
        if self.kind is WindowKind.CALENDAR and (self.unit is None or self.size_s is not None):
            raise ValueError("a calendar window takes `unit` and no `size_s`")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None


class BudgetAction(StrEnum):
    BLOCK = "block"
    """The gateway refuses calls with 429 once the budget is spent."""
    ALERT = "alert"
    """Spending past the limit only raises alerts."""


ThresholdPct = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class BudgetDefinition(Record, tag=1, kw_only=True):
    """A budget, as published on the compacted definitions topic (keyed by ``budget_id``).

    A definition with ``deleted=True`` retires the budget.
    """

    budget_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    scope: dict[Dimension, Name]
    window: BudgetWindow
    limit_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    limit_usd: Decimal | None = None
    action: BudgetAction = BudgetAction.BLOCK
    thresholds_pct: list[ThresholdPct] = msgspec.field(default_factory=lambda: [50, 80, 100])
    description: str = ""
    deleted: bool = False

    def __post_init__(self) -> None:
        if not self.scope:
            invalid(self, "scope", "names no dimension; a budget must be scoped")
        if self.limit_tokens is None and self.limit_usd is None:
            invalid(self, "limit_tokens", "a budget needs `limit_tokens`, `limit_usd`, or both")
        require_non_negative_usd(self, "limit_usd", self.limit_usd)
        if self.limit_usd is not None and self.limit_usd == 0:
            invalid(self, "limit_usd", "must be greater than zero")
        if self.thresholds_pct != sorted(set(self.thresholds_pct)):
            invalid(self, "thresholds_pct", "must be increasing and without repeats")

    def covers(self, values: Mapping[Dimension, str | None]) -> dict[Dimension, str] | None:
        """The subject of this budget that an event with ``values`` counts toward, if any."""
        subject: dict[Dimension, str] = {}
        for dimension, wanted in self.scope.items():
            actual = values.get(dimension)
            if actual is None or (wanted != EACH and wanted != actual):
                return None
            subject[dimension] = actual
        return subject


class BudgetStatus(StrEnum):
    OK = "ok"
    WARNING = "warning"
    """A threshold below 100 % was crossed."""
    EXCEEDED = "exceeded"


class BudgetState(Record, tag=1, kw_only=True):
    """Where one subject of one budget stands, as of some point in the usage stream.

    Published on the compacted state topic keyed by ``key()``; every gateway instance
    reads it to enforce blocking budgets.
    """

    budget_id: Name
    subject: str
    scope: dict[Dimension, Name]
    action: BudgetAction
    status: BudgetStatus
    spent_tokens: NonNegativeInt
    spent_usd: Decimal
    limit_tokens: NonNegativeInt | None = None
    limit_usd: Decimal | None = None
    window_start: UtcDatetime
    window_end: UtcDatetime
    reset_at: UtcDatetime | None = None
    """When spend will next fall back under the limit; the gateway's ``Retry-After``."""
    threshold_pct: ThresholdPct | None = None
    """The highest threshold crossed in this window."""
    as_of_time: UtcDatetime
    as_of_offsets: dict[int, int] = {}
    """Per usage-topic partition, the next offset not yet counted."""

    def __post_init__(self) -> None:
        require_non_negative_usd(self, "spent_usd", self.spent_usd)
        require_non_negative_usd(self, "limit_usd", self.limit_usd)
        if self.window_end < self.window_start:
            invalid(self, "window_end", "is before `window_start`")

    def key(self) -> str:
        return state_key(self.budget_id, self.subject)

    @property
    def remaining_tokens(self) -> int | None:
        if self.limit_tokens is None:
            return None
        return max(self.limit_tokens - self.spent_tokens, 0)

    @property
    def remaining_usd(self) -> Decimal | None:
        if self.limit_usd is None:
            return None
        return max(self.limit_usd - self.spent_usd, Decimal(0))

    def is_blocking(self, now: datetime) -> bool:
        """True while this state tells a gateway to refuse the subject's calls."""
        if self.action is not BudgetAction.BLOCK or self.status is not BudgetStatus.EXCEEDED:
            return False
        return self.reset_at is None or now < self.reset_at


def state_key(budget_id: str, subject: str) -> str:
    """The compaction key of a budget state record."""
    return f"{budget_id}|{subject}"
