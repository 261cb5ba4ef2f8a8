"""What one call does: the config, overridden by the call's own ``x-fake-*`` headers.

Headers let a test steer a single request, even through a gateway that forwards client
headers upstream. Numeric headers take a non-negative number; flag headers take ``1``/``true``.

=============================  ===================================================
``x-fake-latency-ms``          delay before the answer or the first chunk
``x-fake-chunk-delay-ms``      delay between streamed chunks
``x-fake-output-tokens``       completion tokens to produce
``x-fake-cached-tokens``       prompt tokens to report as cached
``x-fake-reasoning-tokens``    hidden reasoning tokens to report (OpenAI)
``x-fake-no-usage``            omit usage everywhere
``x-fake-fail-status``         answer this status with the API's error body (0: don't fail)
``x-fake-hang``                never answer
``x-fake-drop-after-chunks``   close the connection after this many stream events
=============================  ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from tollgate.fake_provider.config import FakeProviderConfig
from tollgate.fake_provider.errors import InvalidRequest

LATENCY_MS = "x-fake-latency-ms"
CHUNK_DELAY_MS = "x-fake-chunk-delay-ms"
OUTPUT_TOKENS = "x-fake-output-tokens"
CACHED_TOKENS = "x-fake-cached-tokens"
REASONING_TOKENS = "x-fake-reasoning-tokens"
NO_USAGE = "x-fake-no-usage"
FAIL_STATUS = "x-fake-fail-status"
HANG = "x-fake-hang"
DROP_AFTER_CHUNKS = "x-fake-drop-after-chunks"

_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class CallBehaviour:
    """The settings one call runs with; ``fail_status`` is set only if this call must fail."""

    latency_ms: float
    chunk_delay_ms: float
    output_tokens: int
    report_usage: bool
    cached_input_tokens: int
    reasoning_tokens: int
    fail_status: int | None
    hang: bool
    drop_after_chunks: int | None

    @classmethod
    def from_config(cls, config: FakeProviderConfig, *, failing: bool) -> CallBehaviour:
        return cls(
            latency_ms=config.latency_ms,
            chunk_delay_ms=config.chunk_delay_ms,
            output_tokens=config.output_tokens,
            report_usage=config.report_usage,
            cached_input_tokens=config.cached_input_tokens,
            reasoning_tokens=config.reasoning_tokens,
            fail_status=config.fail_status if failing else None,
            hang=config.hang,
            drop_after_chunks=config.drop_after_chunks,
        )

    def overridden_by(self, headers: CIMultiDictProxy[str]) -> CallBehaviour:
        """This behaviour with the call's ``x-fake-*`` headers applied."""
        get = headers.get
        latency, delay, output = get(LATENCY_MS), get(CHUNK_DELAY_MS), get(OUTPUT_TOKENS)
        cached, reasoning, no_usage = get(CACHED_TOKENS), get(REASONING_TOKENS), get(NO_USAGE)
        fail, hang, drop = get(FAIL_STATUS), get(HANG), get(DROP_AFTER_CHUNKS)
        return CallBehaviour(
            latency_ms=self.latency_ms if latency is None else _number(LATENCY_MS, latency),
            chunk_delay_ms=self.chunk_delay_ms if delay is None else _number(CHUNK_DELAY_MS, delay),
            output_tokens=self.output_tokens if output is None else _count(OUTPUT_TOKENS, output),
            report_usage=self.report_usage if no_usage is None else no_usage.lower() not in _TRUE,
            cached_input_tokens=(
                self.cached_input_tokens if cached is None else _count(CACHED_TOKENS, cached)
            ),
            reasoning_tokens=(
                self.reasoning_tokens if reasoning is None else _count(REASONING_TOKENS, reasoning)
            ),
            fail_status=self.fail_status if fail is None else _status(fail),
            hang=self.hang if hang is None else hang.lower() in _TRUE,
            drop_after_chunks=(
                self.drop_after_chunks if drop is None else _count(DROP_AFTER_CHUNKS, drop)
            ),
        )


def has_overrides(headers: CIMultiDictProxy[str]) -> bool:
    """Whether any ``x-fake-*`` header is present (most calls have none; they skip parsing)."""
    return any(name[:7].lower() == "x-fake-" for name in headers)


def _number(header: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise InvalidRequest(f"{header} must be a non-negative number, got {value!r}")
    return number


def _count(header: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"{header} must be a non-negative integer, got {value!r}")
    return int(value)


def _status(value: str) -> int | None:
    status = _count(FAIL_STATUS, value)
    if status == 0:
        return None
    if not 400 <= status <= 599:
        raise InvalidRequest(f"{FAIL_STATUS} must be an HTTP error status (400-599)")
    return status
