"""Quality alerts: a backend whose judged answers turn bad is flagged, once, with the spend
it burnt; the rule alone first, then a real worker delivering the alert to a webhook."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import yaml
from aiohttp import web

from stream.quality import QualityConfig, QualityDetector
from tests.factories import T0, make_evaluation, make_priced
from tests.own_broker import wait_until
from tests.servers import AppServer
from tests.stream_world import StreamWorker, TopicReader, produce, usage_records, worker_env
from tollgate.contract import (
    Alert,
    AlertKind,
    Dimension,
    EvaluationEvent,
    PricedEvent,
    UsageEvent,
    decode,
    encode,
)
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

CONFIG = QualityConfig(bucket_s=60, warmup_buckets=3, min_evaluations=10, min_rise=0.2)
BACKENDS = ("openai-0", "openai-1")


def minute_of_calls(
    start: datetime, bad_share: dict[str, float], rng: random.Random, per_backend: int = 10
) -> list[tuple[PricedEvent, EvaluationEvent]]:
    """One minute of judged gpt-4o-mini calls on both backends, with these bad shares."""
    judged = []
    for backend in BACKENDS:
        bad = set(rng.sample(range(per_backend), round(bad_share.get(backend, 0) * per_backend)))
        for i in range(per_backend):
            call = make_priced(
                time=start + timedelta(seconds=5 * i), backend=backend, request_model="gpt-4o-mini"
            )
            label = "hallucinated" if i in bad else "grounded"
            evaluation = make_evaluation(call, time=call.end_time + timedelta(seconds=2),
                                         score_label=label)  # fmt: skip
            judged.append((call, evaluation))
    return judged


def history(minutes: int, turns_bad_at: int) -> list[tuple[PricedEvent, EvaluationEvent]]:
    """``minutes`` of traffic; from ``turns_bad_at`` on, openai-1 hallucinates 80 %."""
    rng = random.Random(3)
    judged = []
    for minute in range(minutes):
        share = {"openai-0": 0.1, "openai-1": 0.8 if minute >= turns_bad_at else 0.1}
        judged += minute_of_calls(T0 + timedelta(minutes=minute), share, rng)
    return judged


def run(
    detector: QualityDetector, judged: list[tuple[PricedEvent, EvaluationEvent]]
) -> list[Alert]:
    alerts: list[Alert] = []
    for call, evaluation in judged:
        alerts += detector.observe_call(call)
        alerts += detector.observe_evaluation(evaluation)
    return alerts + detector.advance(T0 + timedelta(hours=2))


def test_a_backend_whose_answers_turn_bad_raises_one_alert_with_its_spend() -> None:
    alerts = run(QualityDetector(CONFIG), history(minutes=8, turns_bad_at=5))

    backend = [a for a in alerts if ",backend=" in a.subject]
    assert [a.subject for a in backend] == ["tenant=acme,backend=openai-1"]
    assert backend[0].scope == {Dimension.TENANT: "acme"}
    (alert,) = backend
    assert alert.kind is AlertKind.QUALITY_REGRESSION
    assert alert.since == T0.replace(second=0) + timedelta(minutes=5)
    assert alert.score == 0.8
    assert alert.actual_usd == make_priced().cost_usd * 8  # the eight bad answers' spend
    assert alert.impact_usd is not None
    assert Decimal(0) < alert.impact_usd < alert.actual_usd
    assert "hallucination" in alert.summary
    assert "openai-1" in alert.summary
    # The model both backends serve went bad by half as much: flagged too, once.
    model = [a for a in alerts if ",backend=" not in a.subject]
    assert [a.scope[Dimension.MODEL] for a in model] == ["gpt-4o-mini"]


def test_a_steady_backend_and_a_warming_one_raise_nothing() -> None:
    assert run(QualityDetector(CONFIG), history(minutes=8, turns_bad_at=99)) == []
    # Bad from the first minute: there is no baseline to leave yet, and bad is its normal.
    assert run(QualityDetector(CONFIG), history(minutes=8, turns_bad_at=0)) == []


def test_replaying_the_same_records_gives_the_same_alert_ids() -> None:
    judged = history(minutes=8, turns_bad_at=5)
    first = run(QualityDetector(CONFIG), judged)
    again = run(QualityDetector(CONFIG), judged)

    assert [a.alert_id for a in first] == [a.alert_id for a in again] != []


def test_an_evaluation_before_its_call_waits_for_it_and_a_strangers_is_left_out() -> None:
    detector = QualityDetector(
        CONFIG.model_copy(update={"warmup_buckets": 0, "min_evaluations": 1})
    )
    call = make_priced(time=T0, backend="openai-1")
    early = make_evaluation(call, score_label="hallucinated")
    forged = make_evaluation(call, tenant="initech", score_label="hallucinated")

    assert detector.observe_evaluation(early) == []
    detector.observe_call(call)
    detector.observe_evaluation(forged)
    alerts = detector.advance(T0 + timedelta(hours=1))

    subject = "tenant=acme,backend=openai-1"
    assert [a.score for a in alerts if a.subject == subject] == [1.0]  # one evaluation, bad
    assert detector.baseline(subject, "hallucination") == (CONFIG.min_rise, 1)
    assert detector.unmatched == 1


def test_within_the_cooldown_a_backend_that_stays_bad_is_not_said_twice() -> None:
    config = CONFIG.model_copy(update={"cooldown_s": 3600})
    judged = history(minutes=12, turns_bad_at=5)
    alerts = run(QualityDetector(config), judged)

    assert len([a for a in alerts if ",backend=" in a.subject]) == 1


# -- in a real worker ---------------------------------------------------------------------------


async def test_a_worker_alerts_a_webhook_when_a_backends_answers_turn_bad(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    received: list[Alert] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(decode(await request.read(), Alert))
        return web.Response(status=204)

    def receiver_app() -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", receive)
        return app

    receiver = AppServer(receiver_app).start()
    hooks = tmp_path / "webhooks.yaml"
    hooks.write_text(yaml.safe_dump({"webhooks": [{"url": f"{receiver.url}/hook"}]}))
    env = worker_env(
        kafka_settings,
        broker,
        tmp_path,
        TOLLGATE_STREAM_WEBHOOKS_FILE=str(hooks),
        TOLLGATE_STREAM_QUALITY_BUCKET_S="60",
        TOLLGATE_STREAM_QUALITY_WARMUP_BUCKETS="3",
        TOLLGATE_STREAM_QUALITY_MIN_EVALUATIONS="10",
        TOLLGATE_STREAM_QUALITY_MIN_RISE="0.2",
    )
    worker = StreamWorker(env, tmp_path / "worker.log").start()
    alerts = await TopicReader(kafka_settings, broker, topics.alerts).start()
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    rng = random.Random(5)
    judged = []
    for minute in range(8):
        share = {"openai-0": 0.1, "openai-1": 0.8 if minute >= 5 else 0.1}
        judged += minute_of_calls(start + timedelta(minutes=minute), share, rng)
    calls = [UsageEvent(**{f: getattr(c, f) for f in UsageEvent.__struct_fields__})
             for c, _ in judged]  # fmt: skip
    evaluations = [(e.tenant.encode(), encode(e)) for _, e in judged]
    try:
        await produce(kafka_settings, broker, topics.evaluations, evaluations)  # before the calls
        await produce(kafka_settings, broker, topics.usage, usage_records(calls))
        await alerts.wait_for(
            lambda r: any(",backend=" in decode(x.value, Alert).subject for x in r),
            timeout_s=60,
        )
        await alerts.settle(quiet_s=2.0)
        await wait_until(lambda: len(received) >= len(alerts.records), timeout_s=15)
    finally:
        worker.stop()
        await alerts.stop()
        receiver.stop()

    quality = [a for a in alerts.decoded(Alert) if a.kind is AlertKind.QUALITY_REGRESSION]
    backend = [a for a in quality if ",backend=" in a.subject]
    assert [a.subject for a in backend] == ["tenant=acme,backend=openai-1"]
    assert (backend[0].actual_usd or 0) > 0
    assert {a.alert_id for a in received} >= {a.alert_id for a in quality}
