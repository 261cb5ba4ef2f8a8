"""The usage event: one immutable fact per AI call, the source of every number.

Field names follow DESIGN.md and the OpenTelemetry GenAI semantic conventions. Token
counts follow OTel too: ``input_tokens`` *includes* cached tokens
(``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are parts of it), and
``output_tokens`` includes ``reasoning_tokens``. Prompt and completion text never appear.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated

import msgspec

from tollgate.contract.record import (
    Name,
    NonNegativeInt,
    Record,
    Tags,
    UtcDatetime,
    invalid,
)


class Operation(StrEnum):
    """The API operation called (OTel ``gen_ai.operation.name``, by endpoint)."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    MESSAGES = "messages"


class Status(StrEnum):
    """How the call ended, from the gateway's point of view."""

    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    CLIENT_CLOSED = "client_closed"
    REJECTED_BUDGET = "rejected_budget"
    REJECTED_RATE_LIMIT = "rejected_rate_limit"
    REJECTED_AUTH = "rejected_auth"
    REJECTED_INVALID = "rejected_invalid"


REJECTED_STATUSES = frozenset(
    {
        Status.REJECTED_BUDGET,
        Status.REJECTED_RATE_LIMIT,
        Status.REJECTED_AUTH,
        Status.REJECTED_INVALID,
    }
)
"""Calls refused at the door: no upstream was asked, so no tokens can have been used."""


class UsageSource(StrEnum):
    """Where the token counts come from."""

    REPORTED = "reported"
    """The provider reported them."""
    ESTIMATED = "estimated"
    """The provider reported nothing; the gateway estimated from what passed through."""
    NONE = "none"
    """No model ran (the call was refused or failed before the upstream answered)."""


HttpStatus = Annotated[int, msgspec.Meta(ge=100, le=599)]
Milliseconds = Annotated[float, msgspec.Meta(ge=0)]


class UsageEvent(Record, tag=2, kw_only=True):
    """One AI call, as the gateway saw it. Keyed on the topic by tenant.

    ``event_id`` is a UUIDv7 and the idempotency key: the gateway may deliver an event
    more than once (spool replay, producer retry); every consumer dedupes by it.

    Version 2 added ``token_budget`` and ``cache_creation_1h_input_tokens``; version 1
    records are still read (``UsageEventV1``).
    """

    event_id: uuid.UUID
    time: UtcDatetime
    end_time: UtcDatetime

    tenant: Name | None
    """None only when the caller could not be authenticated."""
    team: Name | None = None
    api_key_id: Name | None = None
    """An id or a hash prefix of the key — never the secret."""
    user: Name | None = None
    tags: Tags = {}

    provider: Name
    """OTel ``gen_ai.provider.name``: openai, azure.ai.openai, anthropic, ..."""
    operation: Operation
    request_model: Name | None = None
    """None when the request was refused before a model could be read from it."""
    response_model: Name | None = None
    backend: Name | None = None
    """Which configured deployment served the call."""

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cache_read_input_tokens: NonNegativeInt = 0
    cache_creation_input_tokens: NonNegativeInt = 0
    reasoning_tokens: NonNegativeInt = 0
    usage_source: UsageSource = UsageSource.REPORTED

    status: Status
    http_status: HttpStatus
    duration_ms: Milliseconds
    ttft_ms: Milliseconds | None = None
    """Time to first token, for streamed calls."""
    streamed: bool = False
    cache_creation_1h_input_tokens: NonNegativeInt = 0
    """The part of ``cache_creation_input_tokens`` written to the cache for one hour
    (Anthropic bills it at 2x input, the 5-minute writes at 1.25x). Records written
    before the field existed read as 0: all their writes were priced as 5-minute ones."""
    token_budget: NonNegativeInt | None = None
    """The per-call token budget the call ran under (``X-Token-Budget``), if it had one."""

    def __post_init__(self) -> None:
        if self.event_id.version != 7:
            invalid(self, "event_id", f"must be a UUIDv7, got version {self.event_id.version}")
        if self.end_time < self.time:
            invalid(self, "end_time", "is before `time`")
        if self.tenant is None and self.status is not Status.REJECTED_AUTH:
            invalid(self, "tenant", "may be null only when status is rejected_auth")
        cached = self.cache_read_input_tokens + self.cache_creation_input_tokens
        if cached > self.input_tokens:
            invalid(
                self,
                "cache_read_input_tokens",
                f"cached tokens ({cached}) exceed input_tokens ({self.input_tokens}); "
                "input_tokens includes cached tokens",
            )
        if self.cache_creation_1h_input_tokens > self.cache_creation_input_tokens:
            invalid(
                self,
                "cache_creation_1h_input_tokens",
                f"({self.cache_creation_1h_input_tokens}) exceed cache_creation_input_tokens "
                f"({self.cache_creation_input_tokens}), which include them",
            )
        if self.reasoning_tokens > self.output_tokens:
            invalid(
                self,
                "reasoning_tokens",
                f"({self.reasoning_tokens}) exceed output_tokens ({self.output_tokens}); "
                "output_tokens includes reasoning tokens",
            )
        if self.status in REJECTED_STATUSES and self.total_tokens:
            invalid(self, "status", f"{self.status} calls reached no model and carry no tokens")

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens billed at the full input rate."""
        return self.input_tokens - self.cache_read_input_tokens - self.cache_creation_input_tokens


class UsageEventV1(UsageEvent, tag=1, kw_only=True):
    """A usage event as version 1 wrote it: no ``token_budget``, no 1-hour cache writes.
    Read, never written."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_budget is not None:
            invalid(self, "token_budget", "is not a field of schema_version 1")
        if self.cache_creation_1h_input_tokens:
            invalid(self, "cache_creation_1h_input_tokens", "is not a field of schema_version 1")
