"""What the gateway learns about one AI call as it proceeds, and the event it becomes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.budget_book import Reservation
from gateway.errors import Dialect
from gateway.principal import Principal
from gateway.usage_reading import TokenUsage
from tollgate.contract import REJECTED_STATUSES, Operation, Status, UsageEvent, UsageSource
from tollgate.ids import uuid7


@dataclass(slots=True)
class Call:
    operation: Operation
    dialect: Dialect
    event_id: object = field(default_factory=uuid7)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_mono: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    request_model: str | None = None
    route_model: str | None = None
    """The routes-file key that served ``request_model`` (its name, or a pattern)."""
    response_model: str | None = None
    backend: str | None = None
    provider: str | None = None
    usage: TokenUsage | None = None
    status: Status = Status.OK
    http_status: int = 200
    ttft_ms: float | None = None
    streamed: bool = False
    reservation: Reservation | None = None
    """Budget headroom the call holds until it is settled."""
    written: asyncio.Event | None = None
    """Set once the call is settled: set itself once its usage event is on disk."""
    token_budget: int | None = None
    """The per-call token budget the call ran under (``X-Token-Budget``)."""
    upstream_path: str | None = None
    """The canonical ``/v1`` path the call is forwarded as, when it came by another door."""

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started_mono) * 1000

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def to_event(self) -> UsageEvent:
        duration_ms = self.elapsed_ms()
        usage = self.usage.sane() if self.usage and self.status not in REJECTED_STATUSES else None
        principal = self.principal
        return UsageEvent(
            event_id=self.event_id,  # type: ignore[arg-type]
            time=self.started_at,
            end_time=self.started_at + timedelta(milliseconds=duration_ms),
            tenant=principal.tenant if principal else None,
            team=principal.team if principal else None,
            api_key_id=principal.api_key_id if principal else None,
            user=principal.user if principal else None,
            tags=principal.tags if principal else {},
            provider=self.provider or self.dialect.value,
            operation=self.operation,
            request_model=self.request_model,
            response_model=_name(self.response_model),
            backend=self.backend,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cache_read_input_tokens=usage.cache_read_input_tokens if usage else 0,
            cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            usage_source=usage.source if usage else UsageSource.NONE,
            status=self.status,
            http_status=self.http_status,
            duration_ms=duration_ms,
            ttft_ms=self.ttft_ms,
            streamed=self.streamed,
            token_budget=self.token_budget,
        )


def _name(value: str | None) -> str | None:
    """An upstream-supplied name as the contract takes it: non-empty, at most 256 chars."""
    return value[:256] if value else None
