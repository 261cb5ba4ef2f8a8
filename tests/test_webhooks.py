"""Webhook delivery against a real receiver on loopback: formats, retries, queueing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from stream.webhooks import WebhookSender, WebhookTarget
from tests.factories import make_alert
from tests.servers import AppServer
from tollgate.broker import free_port
from tollgate.contract import Alert, AlertKind, Severity, decode

Step = int | tuple[int, dict[str, str]] | str
"""What the receiver does with one request: a status, a status with headers, or "hang"."""


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver that records every request and answers by a plan."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plan: list[Step] = []
        self.delay_s = 0.0
        self.server = AppServer(self._app).start()

    def url(self, path: str = "/hook") -> str:
        return self.server.url + path

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{name}", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(time.monotonic(), request.path, dict(request.headers), body))
        step = self.plan.pop(0) if self.plan else 200
        await asyncio.sleep(self.delay_s)
        if step == "hang":
            await asyncio.sleep(1.0)
            step = 200
        status, headers = step if isinstance(step, tuple) else (step, {})
        return web.Response(status=int(status), headers=headers)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.stop()


def target(url: str, **overrides: Any) -> WebhookTarget:
    fields: dict[str, Any] = {"url": url, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return WebhookTarget(**(fields | overrides))


async def test_a_generic_target_receives_the_exact_alert_json(receiver: Receiver) -> None:
    alert = make_alert()
    hook = target(receiver.url(), headers={"Authorization": "Bearer s3cret"})
    async with WebhookSender([hook]) as sender:
        results = await sender.send(alert)

    assert [(r.delivered, r.attempts, r.status) for r in results] == [(True, 1, 200)]
    (request,) = receiver.requests
    assert decode(request.body, Alert) == alert
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Tollgate-Alert-Id"] == str(alert.alert_id)
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert sender.stats.sent == 1


async def test_a_slack_target_receives_text_with_the_summary(receiver: Receiver) -> None:
    alert = make_alert(severity=Severity.CRITICAL)
    async with WebhookSender([target(receiver.url(), kind="slack")]) as sender:
        (result,) = await sender.send(alert)

    assert result.delivered
    message = json.loads(receiver.requests[0].body)
    assert alert.summary in message["text"]
    assert "critical" in message["text"]
    blocks = json.dumps(message["blocks"])
    for shown in (alert.subject, "$0.50", "$4.90", "$4.40", str(alert.alert_id)):
        assert shown in blocks


async def test_a_slack_budget_alert_shows_spend_and_limit(receiver: Receiver) -> None:
    alert = make_alert(
        kind=AlertKind.BUDGET_THRESHOLD,
        budget_id="acme-daily-usd",
        threshold_pct=80,
        spent_usd=Decimal("8.10"),
        limit_usd=Decimal("10"),
        expected_usd=None,
        actual_usd=None,
        impact_usd=None,
        score=None,
    )
    async with WebhookSender([target(receiver.url(), kind="slack")]) as sender:
        await sender.send(alert)

    blocks = json.dumps(json.loads(receiver.requests[0].body)["blocks"])
    for shown in ("acme-daily-usd", "80 %", "$8.10", "$10.00"):
        assert shown in blocks


async def test_a_503_is_retried_and_delivered_on_the_second_attempt(receiver: Receiver) -> None:
    receiver.plan = [503]
    alert = make_alert()
    async with WebhookSender([target(receiver.url())]) as sender:
        (result,) = await sender.send(alert)

    assert (result.delivered, result.attempts, result.status) == (True, 2, 200)
    ids = {r.headers["X-Tollgate-Alert-Id"] for r in receiver.requests}
    assert ids == {str(alert.alert_id)}
    assert (sender.stats.sent, sender.stats.retried, sender.stats.failed) == (1, 1, 0)


async def test_a_429_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.plan = [(429, {"Retry-After": "1"})]
    async with WebhookSender([target(receiver.url(), backoff_max_s=5)]) as sender:
        (result,) = await sender.send(make_alert())

    assert result.delivered
    first, second = receiver.requests
    assert 0.9 <= second.at - first.at < 2


async def test_a_long_retry_after_is_capped_by_backoff_max(receiver: Receiver) -> None:
    receiver.plan = [(429, {"Retry-After": "3600"})]
    async with WebhookSender([target(receiver.url(), backoff_max_s=0.1)]) as sender:
        (result,) = await asyncio.wait_for(sender.send(make_alert()), 2)

    assert (result.delivered, result.attempts) == (True, 2)


async def test_a_400_is_not_retried(receiver: Receiver) -> None:
    receiver.plan = [400]
    async with WebhookSender([target(receiver.url())]) as sender:
        (result,) = await sender.send(make_alert())

    assert (result.delivered, result.attempts, result.status) == (False, 1, 400)
    assert len(receiver.requests) == 1
    assert (sender.stats.retried, sender.stats.failed) == (0, 1)


async def test_a_hanging_receiver_times_out_and_fails_after_max_attempts(
    receiver: Receiver,
) -> None:
    receiver.plan = ["hang"] * 3
    hook = target(receiver.url(), timeout_s=0.2, max_attempts=3)
    async with WebhookSender([hook]) as sender:
        (result,) = await sender.send(make_alert())

    assert (result.delivered, result.attempts, result.status) == (False, 3, None)
    assert result.error is not None
    assert "timed out" in result.error
    assert len(receiver.requests) == 3
    assert (sender.stats.retried, sender.stats.failed) == (2, 1)


async def test_a_refused_connection_is_retried_then_reported_failed() -> None:
    hook = target(f"http://127.0.0.1:{free_port()}/hook", max_attempts=3)
    async with WebhookSender([hook]) as sender:
        (result,) = await sender.send(make_alert())

    assert (result.delivered, result.attempts) == (False, 3)
    assert sender.stats.failed == 1


async def test_min_severity_keeps_lesser_alerts_from_a_target(receiver: Receiver) -> None:
    everything = target(receiver.url("/all"))
    pager = target(receiver.url("/pager"), min_severity=Severity.CRITICAL)
    async with WebhookSender([everything, pager]) as sender:
        warned = await sender.send(make_alert(severity=Severity.WARNING))
        paged = await sender.send(make_alert(severity=Severity.CRITICAL))

    assert (len(warned), len(paged)) == (1, 2)
    assert [r.path for r in receiver.requests].count("/pager") == 1


async def test_deliver_never_blocks_and_drain_flushes(receiver: Receiver) -> None:
    receiver.delay_s = 0.02
    alerts = [make_alert() for _ in range(20)]
    async with WebhookSender([target(receiver.url())]) as sender:
        started = time.monotonic()
        for alert in alerts:
            sender.deliver(alert)
        assert time.monotonic() - started < 0.05

        assert await sender.drain(5)

    received = [r.headers["X-Tollgate-Alert-Id"] for r in receiver.requests]
    assert received == [str(a.alert_id) for a in alerts]
    assert sender.stats.sent == 20


async def test_a_full_queue_drops_and_counts(receiver: Receiver) -> None:
    sender = WebhookSender([target(receiver.url())], queue_size=2)
    for _ in range(5):
        sender.deliver(make_alert())
    assert sender.stats.dropped == 3

    await sender.start()
    try:
        assert await sender.drain(5)
    finally:
        await sender.close()
    assert len(receiver.requests) == 2


async def test_drain_reports_a_timeout(receiver: Receiver) -> None:
    receiver.plan = ["hang"]
    async with WebhookSender([target(receiver.url(), timeout_s=0.5)]) as sender:
        sender.deliver(make_alert())
        assert not await sender.drain(0.1)


async def test_secrets_stay_out_of_logs_and_repr(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.plan = [500, 500]
    hook = target(
        receiver.url("/services-T000-xoxsecretpath"),
        headers={"Authorization": "Bearer s3cret"},
        max_attempts=2,
    )
    with caplog.at_level(logging.DEBUG, logger="stream.webhooks"):
        async with WebhookSender([hook]) as sender:
            (result,) = await sender.send(make_alert())

    assert not result.delivered
    logged = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "webhook delivery failed" in logged
    for secret in ("s3cret", "xoxsecretpath"):
        assert secret not in logged
        assert secret not in result.target
    assert "s3cret" not in repr(hook)


def test_a_target_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="URL scheme"):
        WebhookTarget(url="ftp://example.com/hook")
