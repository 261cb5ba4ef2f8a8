"""Synthetic priced events, a chunk at a time, as whole numpy arrays.

Costs are computed the way the stream's meter computes them (``tollgate.pricing.cost``),
but vectorised: every per-token rate of the catalog is an exact whole number of
picodollars (10^-12 USD, the lake's last decimal), so ``tokens x rate`` in int64 is the
exact cost, and the parts add up to ``cost_usd`` to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pyarrow as pa

from analytics.seed_world import (
    FEATURES,
    MAX_INPUT_TOKENS,
    MAX_OUTPUT_TOKENS,
    MODELS,
    ModelSpec,
    World,
)
from tollgate.lake import MONEY, PRICED_SCHEMA
from tollgate.pricing.catalog import PriceCatalog
from tollgate.pricing.model_price import PriceMatch

DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PICO = 12

STATUSES = (
    "ok",
    "upstream_error",
    "timeout",
    "client_closed",
    "rejected_budget",
    "rejected_rate_limit",
    "rejected_auth",
)
OK, UPSTREAM_ERROR, TIMEOUT, CLIENT_CLOSED = 0, 1, 2, 3
_STATUS_SHARE = np.cumsum([0.955, 0.012, 0.005, 0.006, 0.006, 0.012, 0.004])
_HTTP_STATUS = np.asarray([200, 502, 504, 499, 429, 429, 401], dtype=np.int32)
_USAGE_SOURCES = ("reported", "estimated", "none")

_SPEC = {
    "provider": np.asarray([s.provider for s in MODELS], dtype=object),
    "in_mu": np.log([s.input_median for s in MODELS]),
    "out_mu": np.log([max(s.output_median, 1) for s in MODELS]),
    "embeds": np.asarray([s.output_median == 0 for s in MODELS]),
    "cache": np.asarray([s.cache_share for s in MODELS]),
    "cache_write": np.asarray([s.cache_write_share for s in MODELS]),
    "reasoning": np.asarray([s.reasoning for s in MODELS]),
    "stream": np.asarray([s.stream_share for s in MODELS]),
    "ms_per_token": np.asarray([s.ms_per_output_token for s in MODELS]),
}


class SeedPricing:
    """The catalog's rates per model and UTC day, as picodollars per token."""

    def __init__(self, catalog: PriceCatalog) -> None:
        self._catalog = catalog
        self.versions: list[str] = []
        self._version_index: dict[str, int] = {}
        self._days: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def for_events(
        self, model: np.ndarray, epoch_day: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per event: rates (n x 6: input, cache read, cache write, output, reasoning,
        per-request), the index of its price version, and whether it was the fallback."""
        days, inverse = np.unique(epoch_day, return_inverse=True)
        tables = [self._day(int(day)) for day in days]
        rates = np.stack([t[0] for t in tables])[inverse, model]
        versions = np.stack([t[1] for t in tables])[inverse, model]
        fallback = np.stack([t[2] for t in tables])[inverse, model]
        return rates, versions, fallback

    def launched(self, epoch_day: int) -> np.ndarray:
        """Per model, whether the catalog has its own price for calls ending that day (so
        also the day before, when they may have started): a model is not called before
        its launch (unless no model is priced; then all are, at the fallback price)."""
        priced = ~self._day(epoch_day)[2] & ~self._day(epoch_day - 1)[2]
        return priced if priced.any() else np.ones_like(priced)

    def _day(self, epoch_day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = self._days.get(epoch_day)
        if found is None:
            at = _EPOCH + timedelta(days=epoch_day)
            matches = [self._match(spec, at) for spec in MODELS]
            rates = np.asarray([_pico_rates(m) for m in matches], dtype=np.int64)
            versions = np.asarray([self._version(m.version) for m in matches], dtype=np.int64)
            fallback = np.asarray([m.fallback for m in matches])
            found = self._days[epoch_day] = (rates, versions, fallback)
        return found

    def _match(self, spec: ModelSpec, at: datetime) -> PriceMatch:
        # As the meter does: the response model when the catalog knows it, else the request's.
        match = self._catalog.lookup(spec.provider, spec.response_model, at)
        if match.fallback:
            requested = self._catalog.lookup(spec.provider, spec.request_model, at)
            if not requested.fallback:
                match = requested
        return match

    def _version(self, version: str) -> int:
        index = self._version_index.get(version)
        if index is None:
            index = self._version_index[version] = len(self.versions)
            self.versions.append(version)
        return index


@dataclass(frozen=True, slots=True)
class Chunk:
    """One batch of lake rows, and the columns budgets and alerts are worked out from."""

    table: pa.Table
    end_us: np.ndarray
    key: np.ndarray
    model: np.ndarray
    tokens: np.ndarray
    """Input plus output tokens: what budgets count."""
    cost_pico: np.ndarray


@dataclass(frozen=True, slots=True)
class Outage:
    """Every call to ``provider`` ending in ``[start_us, end_us)`` fails."""

    provider: str
    start_us: int
    end_us: int


def build_chunk(
    world: World,
    pricing: SeedPricing,
    rng: np.random.Generator,
    end_us: np.ndarray,
    key: np.ndarray,
    model: np.ndarray,
    *,
    first_sequence: int,
    outages: tuple[Outage, ...] = (),
    token_scale: float = 1.0,
) -> Chunk:
    """Lake rows (``PRICED_SCHEMA``) for calls by ``key`` to ``model`` ending at ``end_us``.

    ``first_sequence`` numbers the chunk's first event within the whole seeding run: it is
    stamped into the event ids, which makes them unique.
    """
    n = len(end_us)
    status = np.searchsorted(_STATUS_SHARE, rng.random(n) * _STATUS_SHARE[-1], side="right")
    for outage in outages:
        hit = (
            (_SPEC["provider"][model] == outage.provider)
            & (end_us >= outage.start_us)
            & (end_us < outage.end_us)
        )
        status[hit] = np.where(rng.random(int(hit.sum())) < 0.7, UPSTREAM_ERROR, TIMEOUT)
    answered = (status == OK) | (status == CLIENT_CLOSED)

    input_tokens = _lognormal(rng, _SPEC["in_mu"][model], 0.9, token_scale, MAX_INPUT_TOKENS)
    output_tokens = _lognormal(rng, _SPEC["out_mu"][model], 0.7, token_scale, MAX_OUTPUT_TOKENS)
    output_tokens[_SPEC["embeds"][model]] = 0
    closed = status == CLIENT_CLOSED
    output_tokens[closed] = (
        output_tokens[closed] * rng.uniform(0.05, 0.6, int(closed.sum()))
    ).astype(np.int64)
    input_tokens[~answered] = 0
    output_tokens[~answered] = 0
    cache_read = np.where(
        rng.random(n) < _SPEC["cache"][model],
        (input_tokens * rng.uniform(0.3, 0.9, n)).astype(np.int64),
        0,
    )
    cache_write = np.where(
        rng.random(n) < _SPEC["cache_write"][model],
        ((input_tokens - cache_read) * rng.uniform(0.1, 0.6, n)).astype(np.int64),
        0,
    )
    reasoning = np.where(
        _SPEC["reasoning"][model], (output_tokens * rng.uniform(0.3, 0.85, n)).astype(np.int64), 0
    )

    streamed = rng.random(n) < _SPEC["stream"][model]
    duration_ms = np.select(
        [answered, status == UPSTREAM_ERROR, status == TIMEOUT],
        [
            150
            + output_tokens * _SPEC["ms_per_token"][model] * rng.uniform(0.6, 1.4, n)
            + input_tokens * 0.01,
            rng.uniform(80, 3000, n),
            60_000 + rng.uniform(0, 500, n),
        ],
        rng.uniform(1, 8, n),
    ).round(3)
    ttft_ms = np.where(streamed & answered, (120 + rng.lognormal(5.5, 0.5, n)).round(3), np.nan)
    start_us = end_us - (duration_ms * 1000).astype(np.int64)

    rates, version, fallback = pricing.for_events(model, start_us // DAY_US)
    uncached = input_tokens - cache_read - cache_write
    input_cost = uncached * rates[:, 0]
    cache_read_cost = cache_read * rates[:, 1]
    cache_write_cost = cache_write * rates[:, 2]
    output_cost = (output_tokens - reasoning) * rates[:, 3] + reasoning * rates[:, 4]
    reached = (status == OK) | (input_tokens > 0) | (output_tokens > 0)
    request_cost = np.where(reached, rates[:, 5], 0)
    cost = input_cost + cache_read_cost + cache_write_cost + output_cost + request_cost

    usage_source = np.where(status == OK, 0, np.where(closed, 1, 2))
    team = world.key_team[key]
    user = world.key_user_start[key] + (rng.random(n) * world.key_user_count[key]).astype(np.int64)
    columns: dict[str, pa.Array] = {
        "event_id": uuid7_text(start_us // 1000, first_sequence, rng),
        "time": pa.array(start_us, pa.timestamp("us", tz="UTC")),
        "end_time": pa.array(end_us, pa.timestamp("us", tz="UTC")),
        "tenant": _names(world.tenants, world.key_tenant[key]),
        "team": _names(world.teams, team),
        "api_key_id": _names(world.keys, key),
        "user": _names(world.users, user),
        "tags": _tags(world, key, rng),
        "provider": _names([s.provider for s in MODELS], model),
        "operation": _names([s.operation for s in MODELS], model),
        "request_model": _names([s.request_model for s in MODELS], model),
        "response_model": _names([s.response_model for s in MODELS], model, mask=~answered),
        "backend": _names([s.backend for s in MODELS], model),
        "input_tokens": pa.array(input_tokens, pa.int64()),
        "output_tokens": pa.array(output_tokens, pa.int64()),
        "cache_read_input_tokens": pa.array(cache_read, pa.int64()),
        "cache_creation_input_tokens": pa.array(cache_write, pa.int64()),
        "reasoning_tokens": pa.array(reasoning, pa.int64()),
        "usage_source": _names(_USAGE_SOURCES, usage_source),
        "status": _names(STATUSES, status),
        "http_status": pa.array(_HTTP_STATUS[status], pa.int32()),
        "duration_ms": pa.array(duration_ms, pa.float64()),
        "ttft_ms": pa.array(ttft_ms, pa.float64(), from_pandas=True),
        "streamed": pa.array(streamed, pa.bool_()),
        "cache_creation_1h_input_tokens": pa.array(np.zeros(n, np.int64), pa.int64()),
        "token_budget": pa.nulls(n, pa.int64()),  # seeded calls ask for no per-call budget
        "input_cost_usd": picodollars(input_cost),
        "cache_read_cost_usd": picodollars(cache_read_cost),
        "cache_creation_cost_usd": picodollars(cache_write_cost),
        "output_cost_usd": picodollars(output_cost),
        "request_cost_usd": picodollars(request_cost),
        "cost_usd": picodollars(cost),
        "price_version": _names(pricing.versions, version),
        "price_fallback": pa.array(fallback, pa.bool_()),
        "list_cost_usd": pa.nulls(n, MONEY),
        "contract_version": pa.nulls(n, pa.string()),
        "_topic": pa.nulls(n, pa.string()),
        "_partition": pa.nulls(n, pa.int32()),
        "_offset": pa.nulls(n, pa.int64()),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in PRICED_SCHEMA], schema=PRICED_SCHEMA)
    return Chunk(
        table=table,
        end_us=end_us,
        key=key,
        model=model,
        tokens=input_tokens + output_tokens,
        cost_pico=cost,
    )


def picodollars(amounts: np.ndarray) -> pa.Array:
    """int64 picodollars → ``decimal128(38, 12)`` USD with the same digits: no arithmetic,
    the integers are the decimal's unscaled values (16-byte two's complement)."""
    values = np.ascontiguousarray(amounts, dtype=np.int64)
    words = np.empty((len(values), 2), dtype=np.int64)
    words[:, 0] = values
    words[:, 1] = values >> 63
    return pa.Array.from_buffers(MONEY, len(values), [None, pa.py_buffer(words.tobytes())])


def usd(picos: int) -> Decimal:
    """Exact USD from picodollars."""
    return Decimal(picos).scaleb(-_PICO)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_SLOTS = np.asarray(
    [i for i in range(36) if i not in (8, 13, 18, 23)], dtype=np.int64
)  # where the 32 hex digits go in 8-4-4-4-12


def uuid7_text(unix_ms: np.ndarray, first_sequence: int, rng: np.random.Generator) -> pa.Array:
    """Canonical UUIDv7 text: 48 bits of ``unix_ms``, random bits, and the event's
    sequence number in the last 40 bits, so no two events of one run share an id."""
    n = len(unix_ms)
    raw = np.empty((n, 16), dtype=np.uint8)
    ms = unix_ms.astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 0:6] = ms[:, 2:8]
    raw[:, 6:11] = rng.integers(0, 256, size=(n, 5), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    sequence = (np.arange(n, dtype=np.uint64) + np.uint64(first_sequence)).astype(">u8")
    raw[:, 11:16] = sequence.view(np.uint8).reshape(n, 8)[:, 3:8]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    text[:, _UUID_SLOTS] = digits
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(text.tobytes())]
    )


def _lognormal(
    rng: np.random.Generator, mu: np.ndarray, sigma: float, scale: float, ceiling: int
) -> np.ndarray:
    values = np.exp(mu + sigma * rng.standard_normal(len(mu))) * scale
    return np.clip(values.round(), 1, ceiling).astype(np.int64)


def _names(
    names: list[str] | tuple[str, ...], index: np.ndarray, mask: np.ndarray | None = None
) -> pa.Array:
    indices = pa.array(index.astype(np.int32), pa.int32(), mask=mask)
    return pa.array(list(names), pa.string()).take(indices)


def _tags(world: World, key: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """``{"env": <the key's>}``, plus a ``feature`` on two calls in five."""
    n = len(key)
    has_feature = rng.random(n) < 0.4
    sizes = 1 + has_feature.astype(np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    is_env = np.ones(total, dtype=bool)
    is_env[offsets[1:][has_feature] - 1] = False
    labels = np.where(is_env, 0, 1)
    env = np.repeat(world.key_env[key], sizes)
    feature = rng.integers(0, len(FEATURES), total)
    values = np.where(is_env, env, len(world.environments) + feature)
    keys = _names(("env", "feature"), labels)
    items = _names((*world.environments, *FEATURES), values)
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), keys, items)


def _pico_rates(match: PriceMatch) -> list[int]:
    price = match.price
    if price is None:
        return [0] * 6
    rates = [*price.per_token, price.request_usd]
    picos = [rate.scaleb(_PICO) for rate in rates]
    for rate, pico in zip(rates, picos, strict=True):
        if pico != pico.to_integral_value():
            raise ValueError(f"price {match.version}: {rate} USD has more than 12 decimals")
    return [int(pico) for pico in picos]
