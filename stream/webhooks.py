"""Alerts out to people: HTTP webhooks, generic JSON or Slack incoming webhooks.

Delivery is at-least-once with retries (exponential backoff with jitter) on connection
errors, timeouts, 429 and 5xx; other 4xx answers are final. Every request carries the
alert's id in ``X-Tollgate-Alert-Id``, so a receiver that dedupes on it sees each alert
once however many times it was sent.

``send`` delivers and reports; ``deliver`` queues and returns at once, for callers that
must not wait on a receiver (a stream agent). Each target has its own queue and worker,
so a slow receiver delays only itself. Target URLs and headers may hold secrets (a Slack
webhook URL is one): logs name a target by scheme, host and port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import yaml
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, model_validator
from yarl import URL

from tollgate.contract import Alert, AlertKind, Severity, encode
from tollgate.errors import SettingsError

log = logging.getLogger(__name__)

ALERT_ID_HEADER = "X-Tollgate-Alert-Id"
_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_SEVERITY_ICON = {
    Severity.INFO: ":information_source:",
    Severity.WARNING: ":warning:",
    Severity.CRITICAL: ":rotating_light:",
}
_KIND_TITLE = {
    AlertKind.BUDGET_THRESHOLD: "Budget threshold",
    AlertKind.COST_ANOMALY: "Cost anomaly",
    AlertKind.NEW_SPENDER: "New spender",
    AlertKind.UNPRICED_MODEL: "Model priced at the fallback",
}


class WebhookTarget(BaseModel):
    """Where alerts go, and how hard to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: AnyHttpUrl
    kind: Literal["generic", "slack"] = "generic"
    timeout_s: Annotated[float, Field(gt=0)] = 5
    """For one attempt, connection included."""
    max_attempts: Annotated[int, Field(ge=1)] = 5
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.5
    backoff_max_s: Annotated[float, Field(ge=0)] = 30
    """Caps the backoff and any ``Retry-After`` a receiver asks for."""
    min_severity: Severity = Severity.INFO
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    """Sent with every request (an ``Authorization`` for the receiver); never logged."""

    @model_validator(mode="after")
    def _backoff_is_ordered(self) -> WebhookTarget:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s is greater than backoff_max_s")
        return self

    @property
    def display(self) -> str:
        """The target as logs show it: no path, query or credentials."""
        return f"{self.url.scheme}://{self.url.host}:{self.url.port}"

    def accepts(self, alert: Alert) -> bool:
        return _SEVERITY_RANK[alert.severity] >= _SEVERITY_RANK[self.min_severity]


@dataclass(frozen=True)
class DeliveryResult:
    """How one alert fared at one target."""

    target: str
    """``WebhookTarget.display``: scheme, host and port."""
    alert_id: str
    delivered: bool
    attempts: int
    status: int | None = None
    """The last HTTP status received, if any."""
    error: str | None = None


@dataclass
class DeliveryStats:
    """Counters since start: deliveries, not HTTP requests (``retried`` counts requests)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    """Alerts ``deliver`` could not queue because a target's queue was full."""


@dataclass
class _Outbox:
    target: WebhookTarget
    queue: asyncio.Queue[Alert]
    worker: asyncio.Task[None] | None = field(default=None)


class WebhookSender:
    """Posts alerts to webhook targets, now (``send``) or in the background (``deliver``).

    Use it as ``async with WebhookSender(targets) as sender`` or call ``start`` and
    ``close``; call ``drain`` before ``close`` to flush queued alerts at shutdown. A
    session passed in is used as is and left open; otherwise the sender owns one.
    """

    def __init__(
        self,
        targets: Sequence[WebhookTarget],
        session: aiohttp.ClientSession | None = None,
        *,
        queue_size: int = 1000,
        rng: random.Random | None = None,
    ) -> None:
        self.targets = list(targets)
        self.stats = DeliveryStats()
        self._session = session
        self._owns_session = session is None
        self._rng = rng or random.Random()
        self._outboxes = [_Outbox(t, asyncio.Queue(maxsize=queue_size)) for t in self.targets]

    async def __aenter__(self) -> WebhookSender:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the session if needed and start one background worker per target."""
        self._ensure_session()
        for outbox in self._outboxes:
            if outbox.worker is None:
                outbox.worker = asyncio.create_task(
                    self._work(outbox), name=f"webhook {outbox.target.display}"
                )

    async def close(self) -> None:
        """Stop the workers (alerts still queued are abandoned) and close an own session."""
        for outbox in self._outboxes:
            if outbox.worker is not None:
                outbox.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await outbox.worker
                outbox.worker = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, alert: Alert) -> list[DeliveryResult]:
        """Deliver ``alert`` to every target whose ``min_severity`` allows, concurrently."""
        targets = [t for t in self.targets if t.accepts(alert)]
        return list(await asyncio.gather(*(self._deliver_to(t, alert) for t in targets)))

    def deliver(self, alert: Alert) -> None:
        """Queue ``alert`` for every target that accepts it; never waits.

        Call from the event loop's thread. A full queue drops the alert for that target,
        counted in ``stats.dropped`` and logged.
        """
        for outbox in self._outboxes:
            if not outbox.target.accepts(alert):
                continue
            try:
                outbox.queue.put_nowait(alert)
            except asyncio.QueueFull:
                self.stats.dropped += 1
                log.warning(
                    "webhook queue full; alert dropped",
                    extra={"fields": _fields(outbox.target, alert)},
                )

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued alert is delivered or given up; False on timeout."""
        waits = [outbox.queue.join() for outbox in self._outboxes]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- delivery --------------------------------------------------------------------------

    async def _work(self, outbox: _Outbox) -> None:
        while True:
            alert = await outbox.queue.get()
            try:
                await self._deliver_to(outbox.target, alert)
            except Exception:
                log.exception(
                    "webhook delivery crashed", extra={"fields": _fields(outbox.target, alert)}
                )
            finally:
                outbox.queue.task_done()

    async def _deliver_to(self, target: WebhookTarget, alert: Alert) -> DeliveryResult:
        session = self._ensure_session()
        body = slack_message(alert) if target.kind == "slack" else encode(alert)
        headers = {
            **target.headers,
            "Content-Type": "application/json",
            ALERT_ID_HEADER: str(alert.alert_id),
        }
        timeout = aiohttp.ClientTimeout(total=target.timeout_s)
        status: int | None = None
        error: str | None = None
        for attempt in range(1, target.max_attempts + 1):
            retry_after: float | None = None
            try:
                async with session.post(
                    URL(str(target.url), encoded=True),
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    if 200 <= status < 300:
                        self.stats.sent += 1
                        return DeliveryResult(
                            target.display, str(alert.alert_id), True, attempt, status
                        )
                    error = f"HTTP {status}"
                    retry_after = _retry_after_s(response.headers.get("Retry-After"))
                    if status != 429 and status < 500:
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = None, _describe(exc, target)
            if attempt == target.max_attempts:
                break
            self.stats.retried += 1
            delay = self._backoff_s(target, attempt, retry_after)
            log.info(
                "webhook attempt failed; retrying",
                extra={"fields": {**_fields(target, alert), "error": error, "retry_in_s": delay}},
            )
            await asyncio.sleep(delay)
        self.stats.failed += 1
        log.warning(
            "webhook delivery failed",
            extra={"fields": {**_fields(target, alert), "error": error, "attempts": attempt}},
        )
        return DeliveryResult(target.display, str(alert.alert_id), False, attempt, status, error)

    def _backoff_s(self, target: WebhookTarget, attempt: int, retry_after: float | None) -> float:
        """``Retry-After`` when the receiver gave one, else exponential with jitter; capped."""
        if retry_after is not None:
            return min(retry_after, target.backoff_max_s)
        ceiling = min(target.backoff_initial_s * 2 ** (attempt - 1), target.backoff_max_s)
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session


# -- what receivers get ----------------------------------------------------------------------


def slack_message(alert: Alert) -> bytes:
    """A Slack incoming-webhook message: ``text`` for notifications, ``blocks`` to read."""
    title = f"{_SEVERITY_ICON[alert.severity]} *{_KIND_TITLE[alert.kind]}* ({alert.severity})"
    facts = [("Subject", f"`{alert.subject}`")]
    if alert.kind is AlertKind.BUDGET_THRESHOLD:
        facts += [
            ("Budget", alert.budget_id),
            ("Threshold", f"{alert.threshold_pct} %" if alert.threshold_pct else None),
            ("Spent", _money(alert.spent_usd)),
            ("Limit", _money(alert.limit_usd)),
        ]
    else:
        facts += [
            ("Expected", _money(alert.expected_usd)),
            ("Actual", _money(alert.actual_usd)),
            ("Impact", _money(alert.impact_usd)),
        ]
        if alert.score is not None:
            facts.append(("Score", f"{alert.score:.1f}σ"))  # noqa: RUF001 (sigma)
    since = f"since {_when(alert.since)} · " if alert.since else ""
    message: dict[str, Any] = {
        "text": f"[{alert.severity}] {_escape(alert.summary)}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _escape(alert.summary)}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"}
                    for name, value in facts
                    if value is not None
                ],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"{since}at {_when(alert.time)} · alert `{alert.alert_id}`",
                    }
                ],
            },
        ],
    }
    return json.dumps(message, ensure_ascii=False).encode()


def _escape(text: str) -> str:
    """Slack mrkdwn control characters, so names cannot forge links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _money(amount: Decimal | None) -> str | None:
    if amount is None:
        return None
    return f"${amount:,.2f}" if amount >= Decimal("0.01") or amount == 0 else f"${amount:.4f}"


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _describe(exc: BaseException, target: WebhookTarget) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {target.timeout_s} s"
    # aiohttp error messages can quote the URL (and a Slack URL is a secret).
    return type(exc).__name__


def _fields(target: WebhookTarget, alert: Alert) -> dict[str, Any]:
    return {"target": target.display, "alert_id": str(alert.alert_id), "kind": str(alert.kind)}


def load_webhook_targets(path: Path | None) -> list[WebhookTarget]:
    """Targets from a YAML file (``webhooks: [{url: ..., kind: slack}, ...]``); none if unset."""
    if path is None:
        return []
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SettingsError(f"cannot read webhooks file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"webhooks file {path} is not valid YAML: {error}") from None
    entries = content.get("webhooks") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise SettingsError(f"webhooks file {path} must hold a list under `webhooks:`")
    targets = []
    for position, entry in enumerate(entries):
        try:
            targets.append(WebhookTarget.model_validate(entry))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise SettingsError(f"{path}: webhook #{position + 1}: {problems}") from None
    return targets
