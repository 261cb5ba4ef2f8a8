"""Factories for contract records: tests say only what matters to them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tollgate.contract import (
    Alert,
    AlertKind,
    BudgetAction,
    BudgetDefinition,
    BudgetState,
    BudgetStatus,
    BudgetWindow,
    Dimension,
    EvaluationEvent,
    Operation,
    PricedEvent,
    Severity,
    Status,
    UsageEvent,
    WindowKind,
    subject_key,
)
from tollgate.ids import uuid7

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def make_usage(**overrides: Any) -> UsageEvent:
    start = overrides.pop("time", T0)
    fields: dict[str, Any] = {
        "event_id": uuid7(),
        "time": start,
        "end_time": start + timedelta(milliseconds=850),
        "tenant": "acme",
        "team": "search",
        "api_key_id": "key_1a2b3c",
        "user": "ada",
        "provider": "openai",
        "operation": Operation.CHAT,
        "request_model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "backend": "openai-primary",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cache_read_input_tokens": 200,
        "status": Status.OK,
        "http_status": 200,
        "duration_ms": 850.0,
    }
    fields.update(overrides)
    return UsageEvent(**fields)


def make_priced(**overrides: Any) -> PricedEvent:
    costs = {
        "input_cost_usd": Decimal("0.00015"),
        "cache_read_cost_usd": Decimal("0.000015"),
        "cache_creation_cost_usd": Decimal(0),
        "output_cost_usd": Decimal("0.00018"),
        "request_cost_usd": Decimal(0),
        "price_version": "openai/gpt-4o-mini@2024-07-18",
    }
    for name in list(costs):
        if name in overrides:
            costs[name] = overrides.pop(name)
    return PricedEvent.from_usage(make_usage(**overrides), **costs)


def make_budget(**overrides: Any) -> BudgetDefinition:
    fields: dict[str, Any] = {
        "budget_id": "acme-tpm",
        "scope": {Dimension.TENANT: "acme"},
        "window": BudgetWindow(kind=WindowKind.ROLLING, size_s=60),
        "limit_tokens": 100_000,
    }
    fields.update(overrides)
    return BudgetDefinition(**fields)


def make_state(**overrides: Any) -> BudgetState:
    scope = overrides.pop("scope", {Dimension.TENANT: "acme"})
    fields: dict[str, Any] = {
        "budget_id": "acme-daily-usd",
        "subject": subject_key(scope),
        "scope": scope,
        "action": BudgetAction.BLOCK,
        "status": BudgetStatus.OK,
        "spent_tokens": 40_000,
        "spent_usd": Decimal("4.20"),
        "limit_usd": Decimal("10"),
        "window_start": T0.replace(hour=0, minute=0),
        "window_end": T0.replace(hour=0, minute=0) + timedelta(days=1),
        "as_of_time": T0,
        "as_of_offsets": {0: 17, 1: 4},
    }
    fields.update(overrides)
    return BudgetState(**fields)


def make_alert(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": uuid7(),
        "kind": AlertKind.COST_ANOMALY,
        "severity": Severity.WARNING,
        "time": T0,
        "subject": "tenant=acme,request_model=gpt-4o",
        "scope": {Dimension.TENANT: "acme", Dimension.MODEL: "gpt-4o"},
        "summary": "acme's gpt-4o spend is 9.8x its baseline",
        "expected_usd": Decimal("0.50"),
        "actual_usd": Decimal("4.90"),
        "impact_usd": Decimal("4.40"),
        "score": 12.5,
        "since": T0 - timedelta(minutes=5),
    }
    fields.update(overrides)
    return Alert(**fields)


def make_evaluation(call: UsageEvent, **overrides: Any) -> EvaluationEvent:
    """An evaluation of ``call``, received a minute after it ended."""
    fields: dict[str, Any] = {
        "evaluation_id": uuid7(),
        "event_id": call.event_id,
        "time": call.end_time + timedelta(minutes=1),
        "tenant": call.tenant,
        "api_key_id": call.api_key_id,
        "name": "hallucination",
        "score_label": "grounded",
        "score_value": 0.0,
        "evaluator": "judge-v1",
    }
    fields.update(overrides)
    return EvaluationEvent(**fields)
