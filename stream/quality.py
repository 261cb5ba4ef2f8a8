"""Quality regressions: a learned share of bad answers per model and backend, an alert
when it leaves its baseline.

Evaluations (``tollgate.evaluations.v1``) say what a judge thought of a call; the priced
events say which model and backend answered it and what it cost. The detector keeps the
recent calls it was shown (``observe_call``), joins each evaluation to its call
(``observe_evaluation``), and counts, per subject and evaluation name, the evaluations
carrying a label and how many of those carry a *bad* label (``hallucinated``,
``incorrect``… configurable) in tumbling buckets of ``bucket_s`` on the evaluations' event
time. When a bucket closes with at least ``min_evaluations``, its bad share is compared
with the subject's baseline (an exponentially weighted mean of its past buckets, after
``warmup_buckets`` of them): a rise of ``min_rise`` or more is a ``quality_regression``
alert, with the spend the bad answers burnt beyond what the baseline expected as its
impact. Then the bucket is learned, as the cost anomaly detector learns (a bucket that
alerted is learned at the alert threshold, so one bad spell does not poison the baseline).
The same cooldown as cost anomalies keeps one incident to one alert.

Subjects are a tenant's models and a tenant's backends: evaluations and usage are keyed by
tenant, so one worker sees all of a tenant's. An alert's ``scope`` holds budget dimensions
only (tenant, and ``request_model`` for a model); a backend is named in its ``subject``
(``tenant=acme,backend=azure-east``) and its summary. Everything runs on event time; the same
records replayed give the same alerts with the same ids.

Bounded memory: at most ``max_calls`` calls are remembered (the oldest forgotten first),
and an evaluation whose call is not (yet) known waits, at most ``max_waiting`` of them,
for its priced event; evaluations of calls forgotten or never seen are counted in
``unmatched`` and left out.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, NamedTuple
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from tollgate.contract import (
    Alert,
    AlertKind,
    Dimension,
    EvaluationEvent,
    PricedEvent,
    Severity,
    subject_key,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO_USD = Decimal("0.000001")
DEFAULT_BAD_LABELS = (
    "hallucinated",
    "hallucination",
    "incorrect",
    "ungrounded",
    "unsafe",
    "thumbs_down",
    "bad",
)


class QualityConfig(BaseModel):
    """How the quality rule buckets, learns, judges and holds back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket_s: Annotated[int, Field(gt=0)] = 300
    warmup_buckets: Annotated[int, Field(ge=0)] = 6
    """Buckets (each with ``min_evaluations``) a subject learns before it can alert."""
    min_evaluations: Annotated[int, Field(ge=1)] = 20
    """Labelled evaluations a bucket needs to be judged or learned from."""
    min_rise: Annotated[float, Field(gt=0, le=1)] = 0.15
    """How far (as a share, 0.15 = 15 points) the bad share must rise above the baseline."""
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.2
    cooldown_s: Annotated[float, Field(ge=0)] = 1800
    bad_labels: frozenset[str] = frozenset(DEFAULT_BAD_LABELS)
    max_calls: Annotated[int, Field(ge=1)] = 200_000
    max_waiting: Annotated[int, Field(ge=0)] = 10_000


class CallFacts(NamedTuple):
    """What an evaluation needs of the call it judges."""

    tenant: str
    model: str | None
    backend: str | None
    cost_usd: Decimal


@dataclass
class _Bucket:
    labelled: int = 0
    bad: int = 0
    cost_usd: Decimal = Decimal(0)
    bad_cost_usd: Decimal = Decimal(0)


@dataclass
class _Subject:
    scope: dict[Dimension, str]
    key: str
    """``subject_key(scope)``, plus ``,backend=…`` for a backend subject."""
    what: str
    """``model gpt-4o`` or ``backend azure-east``, for the summary."""
    name: str
    open_bucket: int
    current: _Bucket = field(default_factory=_Bucket)
    baseline: float = 0.0
    learned: int = 0
    quiet_until: datetime | None = None


class QualityBaseline(NamedTuple):
    share: float
    buckets: int


class QualityDetector:
    """Per-subject baselines of the bad share of judged answers; see the module docstring."""

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self._calls: OrderedDict[uuid.UUID, CallFacts] = OrderedDict()
        self._waiting: OrderedDict[uuid.UUID, list[EvaluationEvent]] = OrderedDict()
        self._waiting_count = 0
        self._subjects: dict[tuple[str, str], _Subject] = {}
        self.unmatched = 0
        """Evaluations left out: their call was never seen, or forgotten."""

    # -- feeding ---------------------------------------------------------------------------

    def observe_call(self, event: PricedEvent) -> list[Alert]:
        """Remember ``event``'s model, backend and cost; judge evaluations waiting for it."""
        if event.tenant is None:
            return []
        facts = CallFacts(
            event.tenant, event.request_model or event.response_model, event.backend, event.cost_usd
        )
        return self.remember(event.event_id, facts)

    def remember(self, event_id: uuid.UUID, facts: CallFacts) -> list[Alert]:
        """``observe_call`` for a reader that has the facts without the whole event."""
        self._calls[event_id] = facts
        self._calls.move_to_end(event_id)
        while len(self._calls) > self.config.max_calls:
            self._calls.popitem(last=False)
        waiting = self._waiting.pop(event_id, None)
        if not waiting:
            return []
        self._waiting_count -= len(waiting)
        alerts: list[Alert] = []
        for evaluation in waiting:
            alerts += self._count(evaluation, facts)
        return alerts

    def observe_evaluation(self, evaluation: EvaluationEvent) -> list[Alert]:
        """Count ``evaluation`` against its call's subjects (or let it wait for the call)."""
        if evaluation.score_label is None:
            return []  # only labelled evaluations have a bad share
        facts = self._calls.get(evaluation.event_id)
        if facts is None:
            self._wait(evaluation)
            return []
        if facts.tenant != evaluation.tenant:
            self.unmatched += 1  # the gateway refuses this; a forged record changes nothing
            return []
        return self._count(evaluation, facts)

    def advance(self, now: datetime) -> list[Alert]:
        """Close every bucket that ended at or before ``now``."""
        until = self._bucket(now)
        alerts: list[Alert] = []
        for subject in self._subjects.values():
            if subject.open_bucket < until:
                alerts += self._close(subject, until)
        return alerts

    def baseline(self, subject_name: str, name: str) -> QualityBaseline | None:
        """What a subject (an alert's subject string) has learned for evaluation ``name``."""
        subject = self._subjects.get((subject_name, name))
        return None if subject is None else QualityBaseline(subject.baseline, subject.learned)

    # -- counting and judging --------------------------------------------------------------

    def _wait(self, evaluation: EvaluationEvent) -> None:
        if self.config.max_waiting == 0:
            self.unmatched += 1
            return
        self._waiting.setdefault(evaluation.event_id, []).append(evaluation)
        self._waiting_count += 1
        while self._waiting_count > self.config.max_waiting:
            _, dropped = self._waiting.popitem(last=False)
            self._waiting_count -= len(dropped)
            self.unmatched += len(dropped)

    def _count(self, evaluation: EvaluationEvent, facts: CallFacts) -> list[Alert]:
        bucket = self._bucket(evaluation.time)
        bad = evaluation.score_label in self.config.bad_labels
        alerts: list[Alert] = []
        for kind, value in (("model", facts.model), ("backend", facts.backend)):
            if value is None:
                continue
            scope = {Dimension.TENANT: facts.tenant}
            if kind == "model":
                scope[Dimension.MODEL] = value
                subject_name = subject_key(scope)
            else:
                subject_name = f"{subject_key(scope)},backend={quote(value, safe='')}"
            key = (subject_name, evaluation.name)
            subject = self._subjects.get(key)
            if subject is None:
                subject = self._subjects[key] = _Subject(
                    scope, subject_name, f"{kind} {value}", evaluation.name, bucket
                )
            elif bucket > subject.open_bucket:
                alerts += self._close(subject, bucket)
            current = subject.current  # a late evaluation counts in the open bucket
            current.labelled += 1
            current.cost_usd += facts.cost_usd
            if bad:
                current.bad += 1
                current.bad_cost_usd += facts.cost_usd
        return alerts

    def _close(self, subject: _Subject, until: int) -> list[Alert]:
        """Judge and learn the open bucket; the next one opens at ``until``."""
        closed, bucket = subject.current, subject.open_bucket
        subject.current, subject.open_bucket = _Bucket(), until
        config = self.config
        if closed.labelled < config.min_evaluations:
            return []
        share = closed.bad / closed.labelled
        alerts: list[Alert] = []
        learned = share
        if subject.learned >= config.warmup_buckets and share - subject.baseline >= config.min_rise:
            ends = self._bucket_start(bucket + 1)
            if subject.quiet_until is None or ends >= subject.quiet_until:
                alerts.append(self._alert(subject, closed, share, bucket))
                subject.quiet_until = ends + timedelta(seconds=config.cooldown_s)
            learned = subject.baseline + config.min_rise  # one bad spell is not the new normal
        alpha = config.alpha if subject.learned else 1.0
        subject.baseline += alpha * (learned - subject.baseline)
        subject.learned += 1
        return alerts

    def _alert(self, subject: _Subject, closed: _Bucket, share: float, bucket: int) -> Alert:
        starts, ends = self._bucket_start(bucket), self._bucket_start(bucket + 1)
        key = subject.key
        expected_usd = _usd(float(closed.cost_usd) * subject.baseline)
        impact_usd = max(closed.bad_cost_usd - expected_usd, Decimal(0)).quantize(MICRO_USD)
        what = subject.what
        tenant, span = subject.scope[Dimension.TENANT], _duration(self.config.bucket_s)
        summary = (
            f"{subject.name}: {share:.0%} of {closed.labelled} judged answers of "
            f"{tenant} {what} were bad in {span}, "
            f"baseline {subject.baseline:.0%}; {_money(closed.bad_cost_usd)} spent on them"
        )
        severity = (
            Severity.CRITICAL
            if share - subject.baseline >= 2 * self.config.min_rise
            else Severity.WARNING
        )
        return Alert(
            alert_id=_alert_id(f"{key}|{subject.name}", ends),
            kind=AlertKind.QUALITY_REGRESSION,
            severity=severity,
            time=ends,
            subject=key,
            scope=dict(subject.scope),
            summary=summary[:2000],
            expected_usd=expected_usd,
            actual_usd=closed.bad_cost_usd.quantize(MICRO_USD),
            impact_usd=impact_usd,
            score=round(share, 6),
            since=starts,
        )

    # -- time ------------------------------------------------------------------------------

    def _bucket(self, at: datetime) -> int:
        return (at - EPOCH) // timedelta(seconds=self.config.bucket_s)

    def _bucket_start(self, bucket: int) -> datetime:
        return EPOCH + timedelta(seconds=bucket * self.config.bucket_s)


def _alert_id(subject: str, at: datetime) -> uuid.UUID:
    """Stamped with ``at``, the rest a hash of the subject: a replay gives the same id."""
    unix_ms = (at - EPOCH) // timedelta(milliseconds=1)
    digest = hashlib.blake2b(f"quality|{subject}|{unix_ms}".encode(), digest_size=10).digest()
    rand = int.from_bytes(digest, "big")
    value = (unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62
    return uuid.UUID(int=value | rand & ((1 << 62) - 1))


def _usd(amount: float) -> Decimal:
    return max(Decimal(amount).quantize(MICRO_USD), Decimal(0))


def _money(amount: Decimal) -> str:
    return f"${amount:,.2f}" if amount >= Decimal("0.01") or amount == 0 else f"${amount:.4f}"


def _duration(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"
