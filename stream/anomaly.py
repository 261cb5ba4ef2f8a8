"""Cost anomalies: a learned baseline per subject, a score per closed bucket, a cooldown.

Spend is summed per subject into tumbling buckets of ``bucket_s`` (a cost rate per
minute by default). When a bucket closes, its spend is scored against an exponentially
weighted mean and variance of the subject's past buckets, then learned into them.
Everything runs on event time — the ``end_time`` of priced events and the ``now`` the
caller passes to ``advance`` — never on the wall clock, so replaying the same events
gives the same alerts, with the same ids.

Every tracked scope includes the tenant, and the subjects of one tenant share one bucket
clock: one runaway key makes its tenant, team, key and model subjects anomalous at once,
and that is reported as one alert per tenant and bucket, not four.

A second signal, *new spender*, watches keys and models a tenant has never used before:
one that spends ``new_spender_min_usd`` within ``new_spender_window_s`` of its first call
is reported once.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, NamedTuple, Self

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tollgate.contract import Alert, AlertKind, Dimension, PricedEvent, Severity, subject_key

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO_USD = Decimal("0.000001")
STATE_VERSION = 1

DEFAULT_DIMENSIONS: tuple[tuple[Dimension, ...], ...] = (
    (Dimension.TENANT,),
    (Dimension.TENANT, Dimension.TEAM),
    (Dimension.TENANT, Dimension.API_KEY),
    (Dimension.TENANT, Dimension.MODEL),
)

_LABELS = {
    Dimension.TEAM: "team",
    Dimension.API_KEY: "key",
    Dimension.USER: "user",
    Dimension.MODEL: "model",
    Dimension.PROVIDER: "provider",
}


class AnomalyConfig(BaseModel):
    """How the detector buckets, learns, scores and holds back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket_s: Annotated[int, Field(gt=0)] = 60
    warmup_buckets: Annotated[int, Field(ge=0)] = 30
    """Closed buckets a subject learns from before it can be anomalous."""
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Weight of the newest bucket in the EWMA of mean and variance."""
    z_threshold: Annotated[float, Field(gt=0)] = 4.0
    min_impact_usd: Annotated[Decimal, Field(ge=0)] = Decimal("1.00")
    """Spend above expectation, in one bucket, needed to alert."""
    std_floor_ratio: Annotated[float, Field(ge=0)] = 0.1
    std_floor_usd: Annotated[float, Field(gt=0)] = 0.01
    """The score divides by max(std, ratio * mean, floor), never by ~0 on a flat baseline."""
    winsorize: bool = True
    """Learn an anomalous bucket as mean + z * std, so one spike does not poison the baseline."""
    driver_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    """A subject carrying this share of the alert's excess is named as a driver."""
    cooldown_s: Annotated[float, Field(ge=0)] = 1800
    dimensions: tuple[tuple[Dimension, ...], ...] = DEFAULT_DIMENSIONS
    new_spender_dimensions: tuple[Dimension, ...] = (Dimension.API_KEY, Dimension.MODEL)
    new_spender_window_s: Annotated[float, Field(gt=0)] = 600
    new_spender_min_usd: Annotated[Decimal, Field(gt=0)] = Decimal("5")
    max_seen: Annotated[int, Field(ge=1)] = 100_000
    """Keys and models remembered for new-spender, least recently used forgotten first."""
    idle_evict_s: Annotated[float, Field(gt=0)] = 7 * 86400

    @model_validator(mode="after")
    def _scopes_are_per_tenant(self) -> Self:
        for dimensions in self.dimensions:
            if Dimension.TENANT not in dimensions:
                raise ValueError(f"tracked scope {dimensions} must include the tenant")
        if Dimension.TENANT in self.new_spender_dimensions:
            raise ValueError("new-spender dimensions are per tenant; drop `tenant`")
        return self


class Baseline(NamedTuple):
    """What a subject has learned: its expected spend per bucket and the spread of it."""

    mean_usd: float
    std_usd: float
    buckets: int


# -- state: plain msgspec Structs, so a worker can checkpoint it with to_dict() --------------


class _Subject(msgspec.Struct, kw_only=True):
    scope: dict[Dimension, str]
    last_event: datetime
    mean_usd: float = 0.0
    var_usd2: float = 0.0
    buckets: int = 0
    open_usd: Decimal = Decimal(0)
    run_start: int | None = None
    """The bucket where the current run of anomalous buckets began."""
    cooldown_until: datetime | None = None


class _Tenant(msgspec.Struct, kw_only=True):
    open_bucket: int
    first_bucket: int
    last_event: datetime
    subjects: dict[str, _Subject] = {}


class _Seen(msgspec.Struct, kw_only=True):
    first_seen: datetime
    last_seen: datetime
    is_new: bool
    """False when first seen while its tenant was still learning: known, not new."""
    spent_usd: Decimal = Decimal(0)
    alerted: bool = False


class _State(msgspec.Struct, kw_only=True):
    version: int = STATE_VERSION
    tenants: dict[str, _Tenant] = {}
    seen: dict[str, _Seen] = {}
    """Insertion order is recency order: the first entry is the least recently used."""
    watermark: datetime | None = None
    swept_bucket: int | None = None


class _Finding(NamedTuple):
    key: str
    subject: _Subject
    actual_usd: Decimal
    expected_usd: Decimal
    impact_usd: Decimal
    score: float


class AnomalyDetector:
    """Per-subject cost baselines fed with priced events, in event time.

    Call ``observe`` for every priced event and ``advance`` as time passes (say, every few
    seconds with a watermark the worker trusts); both return the alerts to publish. A
    bucket closes when an event of a later bucket arrives for its tenant or when
    ``advance`` passes its end. Buckets without events close with zero spend, so quiet
    periods are learned too.

    Late events — ones whose bucket already closed — are added to the tenant's current
    bucket: their cost counts, a little late, rather than being lost or reopening a
    decision already published.
    """

    def __init__(self, config: AnomalyConfig | None = None, *, _state: _State | None = None):
        self.config = config or AnomalyConfig()
        self._state = _state or _State()
        alpha = self.config.alpha
        # After this many empty buckets the baseline is zero to 1e-12; stop iterating.
        self._zero_run_cap = 1 if alpha >= 1 else math.ceil(math.log(1e-12) / math.log(1 - alpha))

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, event: PricedEvent) -> list[Alert]:
        """Count ``event``'s cost; return alerts from buckets it closed and new spenders."""
        if event.tenant is None:
            return []
        at = event.end_time
        bucket = self._bucket(at)
        state = self._state
        if state.watermark is None or at > state.watermark:
            state.watermark = at
        alerts: list[Alert] = []
        tenant = state.tenants.get(event.tenant)
        if tenant is None:
            tenant = state.tenants[event.tenant] = _Tenant(
                open_bucket=bucket, first_bucket=bucket, last_event=at
            )
        elif bucket > tenant.open_bucket:
            alerts += self._close(tenant, until=bucket)
        tenant.last_event = max(tenant.last_event, at)

        values = {d: getattr(event, d.value) for d in Dimension}
        for dimensions in self.config.dimensions:
            scope = {d: values[d] for d in dimensions}
            if any(v is None for v in scope.values()):
                continue
            key = subject_key(scope)
            subject = tenant.subjects.get(key)
            if subject is None:
                subject = tenant.subjects[key] = _Subject(scope=scope, last_event=at)
            subject.open_usd += event.cost_usd
            subject.last_event = max(subject.last_event, at)

        alerts += self._new_spenders(event, tenant, values)
        return alerts

    def advance(self, now: datetime) -> list[Alert]:
        """Close every bucket that ended at or before ``now``; forget idle subjects."""
        until = self._bucket(now)
        alerts: list[Alert] = []
        for tenant in self._state.tenants.values():
            if tenant.open_bucket < until:
                alerts += self._close(tenant, until=until)
        if self._state.swept_bucket is None or until > self._state.swept_bucket:
            self._state.swept_bucket = until
            self._evict_idle(now)
        return alerts

    @property
    def watermark(self) -> datetime | None:
        """The latest event time observed."""
        return self._state.watermark

    def baseline(self, scope: Mapping[Dimension, str]) -> Baseline | None:
        """What the subject ``scope`` has learned so far, if it is tracked."""
        tenant = self._state.tenants.get(scope.get(Dimension.TENANT, ""))
        subject = tenant.subjects.get(subject_key(scope)) if tenant else None
        if subject is None:
            return None
        return Baseline(subject.mean_usd, math.sqrt(subject.var_usd2), subject.buckets)

    # -- checkpoints -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-ready builtins (money and times as strings)."""
        return msgspec.to_builtins(self._state)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: AnomalyConfig | None = None) -> Self:
        """A detector resumed from ``to_dict()`` output."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"anomaly state version {data.get('version')!r} is not supported")
        return cls(config, _state=msgspec.convert(data, _State, strict=False))

    # -- closing buckets -------------------------------------------------------------------

    def _close(self, tenant: _Tenant, *, until: int) -> list[Alert]:
        """Close the tenant's open bucket, then the empty ones up to ``until``."""
        closing = tenant.open_bucket
        findings = [self._score(key, s) for key, s in tenant.subjects.items()]
        anomalous = [f for f in findings if f is not None]
        alerts = self._report(anomalous, closing)
        flagged = {f.key for f in anomalous}
        for key, subject in tenant.subjects.items():
            if key in flagged:
                subject.run_start = closing if subject.run_start is None else subject.run_start
            else:
                subject.run_start = None
            self._learn(subject, float(subject.open_usd))
            subject.open_usd = Decimal(0)
            empty = until - closing - 1
            if empty > 0:
                subject.run_start = None
                self._learn_empty(subject, empty)
        tenant.open_bucket = until
        return alerts

    def _score(self, key: str, subject: _Subject) -> _Finding | None:
        """The subject's closing bucket as a finding, if it is anomalous."""
        config = self.config
        if subject.buckets < config.warmup_buckets:
            return None
        actual = float(subject.open_usd)
        score = (actual - subject.mean_usd) / self._spread(subject)
        expected = _usd(subject.mean_usd)
        impact = subject.open_usd - expected
        if score < config.z_threshold or impact < config.min_impact_usd:
            return None
        return _Finding(key, subject, subject.open_usd, expected, impact, score)

    def _spread(self, subject: _Subject) -> float:
        return max(
            math.sqrt(subject.var_usd2),
            self.config.std_floor_ratio * subject.mean_usd,
            self.config.std_floor_usd,
        )

    def _learn(self, subject: _Subject, spend_usd: float) -> None:
        """One bucket into the EWMA (a plain running mean while the subject is young)."""
        config = self.config
        if config.winsorize and subject.buckets >= config.warmup_buckets:
            ceiling = subject.mean_usd + config.z_threshold * self._spread(subject)
            spend_usd = min(spend_usd, ceiling)
        alpha = max(config.alpha, 1 / (subject.buckets + 1))
        diff = spend_usd - subject.mean_usd
        increment = alpha * diff
        subject.mean_usd += increment
        subject.var_usd2 = (1 - alpha) * (subject.var_usd2 + diff * increment)
        subject.buckets += 1

    def _learn_empty(self, subject: _Subject, count: int) -> None:
        for _ in range(min(count, self._zero_run_cap)):
            self._learn(subject, 0.0)
        if count > self._zero_run_cap:
            subject.mean_usd = subject.var_usd2 = 0.0
            subject.buckets += count - self._zero_run_cap

    def _report(self, findings: list[_Finding], bucket: int) -> list[Alert]:
        """One alert for the tenant's fresh anomalies in ``bucket``; cool them all down.

        The alert's numbers are its primary subject's: the broadest anomalous one (the
        tenant, when it is anomalous), then the one with the largest excess. Its scope adds
        the dimensions of the subjects that carry at least ``driver_share`` of that excess,
        so it routes to the team, key or model that caused it.
        """
        end = self._bucket_start(bucket + 1)
        fresh = [
            f
            for f in findings
            if f.subject.cooldown_until is None or end >= f.subject.cooldown_until
        ]
        if not fresh:
            return []
        primary = min(fresh, key=lambda f: (len(f.subject.scope), -f.impact_usd, f.key))
        scope = dict(primary.subject.scope)
        drivers: list[_Finding] = []
        driver_usd = primary.impact_usd * Decimal(str(self.config.driver_share))
        for finding in sorted(fresh, key=lambda f: (-f.impact_usd, f.key)):
            extra = {d: v for d, v in finding.subject.scope.items() if d not in scope}
            agrees = all(scope.get(d, v) == v for d, v in finding.subject.scope.items())
            if finding is not primary and extra and agrees and finding.impact_usd >= driver_usd:
                scope.update(extra)
                drivers.append(finding)
        scope = {d: scope[d] for d in Dimension if d in scope}
        until = end + timedelta(seconds=self.config.cooldown_s)
        for finding in fresh:
            finding.subject.cooldown_until = until
        return [self._anomaly_alert(primary, scope, drivers, bucket)]

    def _anomaly_alert(
        self, primary: _Finding, scope: dict[Dimension, str], drivers: list[_Finding], bucket: int
    ) -> Alert:
        config = self.config
        end = self._bucket_start(bucket + 1)
        run_start = primary.subject.run_start
        since = self._bucket_start(bucket if run_start is None else run_start)
        summary = (
            f"{_who(primary.subject.scope)} spend is {_money(primary.actual_usd)} in "
            f"{_duration(config.bucket_s)}, expected {_money(primary.expected_usd)} "
            f"({primary.score:.1f}σ)"  # noqa: RUF001 (sigma, as on-call reads it)
        )
        named = [f"{_LABELS[d]} {scope[d]}" for d in scope if d not in primary.subject.scope]
        if drivers:
            summary += f"; driven by {', '.join(named)}"
        critical = (
            primary.score >= 2 * config.z_threshold
            or primary.impact_usd >= 10 * config.min_impact_usd
        )
        subject = subject_key(scope)
        return Alert(
            alert_id=_alert_id(AlertKind.COST_ANOMALY, subject, end),
            kind=AlertKind.COST_ANOMALY,
            severity=Severity.CRITICAL if critical else Severity.WARNING,
            time=end,
            subject=subject,
            scope=scope,
            summary=summary,
            expected_usd=primary.expected_usd,
            actual_usd=primary.actual_usd,
            impact_usd=primary.impact_usd,
            score=round(primary.score, 3),
            since=since,
        )

    # -- new spenders ----------------------------------------------------------------------

    def _new_spenders(
        self, event: PricedEvent, tenant: _Tenant, values: dict[Dimension, Any]
    ) -> list[Alert]:
        config = self.config
        at = event.end_time
        learning = self._bucket(at) < tenant.first_bucket + config.warmup_buckets
        window = timedelta(seconds=config.new_spender_window_s)
        seen_map = self._state.seen
        alerts: list[Alert] = []
        for dimension in config.new_spender_dimensions:
            value = values[dimension]
            if value is None:
                continue
            scope = {Dimension.TENANT: event.tenant, dimension: value}
            key = subject_key(scope)
            seen = seen_map.pop(key, None)
            if seen is None:
                seen = _Seen(first_seen=at, last_seen=at, is_new=not learning)
            seen_map[key] = seen  # now the most recently used
            seen.last_seen = max(seen.last_seen, at)
            if not seen.is_new or seen.alerted or at >= seen.first_seen + window:
                continue
            seen.spent_usd += event.cost_usd
            if seen.spent_usd >= config.new_spender_min_usd:
                seen.alerted = True
                alerts.append(self._new_spender_alert(scope, dimension, seen, at))
        while len(seen_map) > config.max_seen:
            del seen_map[next(iter(seen_map))]
        return alerts

    def _new_spender_alert(
        self, scope: dict[Dimension, str], dimension: Dimension, seen: _Seen, at: datetime
    ) -> Alert:
        minutes = max(1, math.ceil((at - seen.first_seen).total_seconds() / 60))
        critical = seen.spent_usd >= 10 * self.config.new_spender_min_usd
        subject = subject_key(scope)
        return Alert(
            alert_id=_alert_id(AlertKind.NEW_SPENDER, subject, at),
            kind=AlertKind.NEW_SPENDER,
            severity=Severity.CRITICAL if critical else Severity.WARNING,
            time=at,
            subject=subject,
            scope=scope,
            summary=(
                f"new {_LABELS[dimension]} {scope[dimension]} of {scope[Dimension.TENANT]} "
                f"spent {_money(seen.spent_usd)} in its first {minutes} min"
            ),
            expected_usd=Decimal(0),
            actual_usd=seen.spent_usd,
            impact_usd=seen.spent_usd,
            since=seen.first_seen,
        )

    # -- bounds ----------------------------------------------------------------------------

    def _evict_idle(self, now: datetime) -> None:
        horizon = now - timedelta(seconds=self.config.idle_evict_s)
        state = self._state
        for name, tenant in list(state.tenants.items()):
            if tenant.last_event < horizon:
                del state.tenants[name]
                continue
            for key, subject in list(tenant.subjects.items()):
                if subject.last_event < horizon:
                    del tenant.subjects[key]
        for key, seen in list(state.seen.items()):
            if seen.last_seen < horizon:
                del state.seen[key]

    # -- time ------------------------------------------------------------------------------

    def _bucket(self, at: datetime) -> int:
        return (at - EPOCH) // timedelta(seconds=self.config.bucket_s)

    def _bucket_start(self, bucket: int) -> datetime:
        return EPOCH + timedelta(seconds=bucket * self.config.bucket_s)


def _alert_id(kind: AlertKind, subject: str, at: datetime) -> uuid.UUID:
    """A UUIDv7 stamped with ``at`` whose random bits are a hash of what the alert is about.

    The same incident replayed after a worker restart gets the same id, so receivers
    that dedupe on ``X-Tollgate-Alert-Id`` see it once.
    """
    unix_ms = (at - EPOCH) // timedelta(milliseconds=1)
    digest = hashlib.blake2b(f"{kind}|{subject}|{unix_ms}".encode(), digest_size=10).digest()
    rand = int.from_bytes(digest, "big")
    rand_a = rand >> 68
    rand_b = rand & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def _usd(amount: float) -> Decimal:
    return max(Decimal(amount).quantize(MICRO_USD), Decimal(0))


def _money(amount: Decimal) -> str:
    return f"${amount:,.2f}" if amount >= Decimal("0.01") or amount == 0 else f"${amount:.4f}"


def _who(scope: Mapping[Dimension, str]) -> str:
    parts = [scope[Dimension.TENANT]]
    parts += [f"{_LABELS[d]} {v}" for d, v in scope.items() if d is not Dimension.TENANT]
    return " ".join(parts)


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
