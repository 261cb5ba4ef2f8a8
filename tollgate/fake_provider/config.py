"""How the fake provider behaves: one frozen record, validated when built.

The same record is patched at run time through ``POST /_fake/config``; a patch builds a new
record, so a half-applied change is never visible to a request in flight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.fake_provider.errors import ConfigError

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "o3-mini",
    "text-embedding-3-small",
    "claude-sonnet-4",
    "claude-haiku-3-5",
)


@dataclass(frozen=True, slots=True)
class FakeProviderConfig:
    """The knobs of the fake provider; the per-call ones can also be set by ``x-fake-*`` headers.

    ``output_tokens`` visible words are produced ("tok0 tok1 ..."); ``reasoning_tokens`` are
    hidden and, as at OpenAI, counted inside the completion/output tokens. ``cached_input_tokens``
    is capped at the prompt's size. Failures hit a fraction ``fail_rate`` of requests on an
    even, deterministic schedule (0.25 fails every 4th), which restarts when the config changes.
    """

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    output_tokens: int = 16
    report_usage: bool = True
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    fail_status: int | None = None
    fail_rate: float = 1.0
    hang: bool = False
    drop_after_chunks: int | None = None
    embedding_dimensions: int = 8
    corrupt_frame_after_chunks: int | None = None
    """Bedrock streams: the event-stream frame after this many has a wrong CRC."""
    models: tuple[str, ...] = DEFAULT_MODELS

    def __post_init__(self) -> None:
        for name in ("latency_ms", "chunk_delay_ms", "fail_rate"):
            _require(_is_number(getattr(self, name)), name, "must be a number")
            _require(getattr(self, name) >= 0, name, "must not be negative")
        for name in ("output_tokens", "cached_input_tokens", "reasoning_tokens"):
            _require(_is_count(getattr(self, name)), name, "must be a non-negative integer")
        for name in ("report_usage", "hang"):
            _require(isinstance(getattr(self, name), bool), name, "must be true or false")
        _require(self.fail_rate <= 1, "fail_rate", "must be between 0 and 1")
        _require(
            self.fail_status is None
            or (_is_count(self.fail_status) and 400 <= self.fail_status <= 599),
            "fail_status",
            "must be an HTTP error status (400-599) or null",
        )
        _require(
            self.drop_after_chunks is None or _is_count(self.drop_after_chunks),
            "drop_after_chunks",
            "must be a non-negative integer or null",
        )
        _require(
            self.corrupt_frame_after_chunks is None or _is_count(self.corrupt_frame_after_chunks),
            "corrupt_frame_after_chunks",
            "must be a non-negative integer or null",
        )
        _require(
            _is_count(self.embedding_dimensions) and self.embedding_dimensions > 0,
            "embedding_dimensions",
            "must be a positive integer",
        )
        _require(
            isinstance(self.models, tuple) and all(isinstance(m, str) for m in self.models),
            "models",
            "must be a list of model names",
        )

    def patched(self, changes: Mapping[str, Any]) -> FakeProviderConfig:
        """A copy with ``changes`` applied (lists become tuples); unknown fields are refused."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        values = dict(changes)
        if isinstance(values.get("models"), list):
            values["models"] = tuple(values["models"])
        return dataclasses.replace(self, **values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field} {message}")
