"""Cost anomaly detection: quiet on noise, loud once on a spike, in event time."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from stream.anomaly import AnomalyConfig, AnomalyDetector
from tests.factories import T0, make_priced
from tollgate.contract import (
    Alert,
    AlertKind,
    Dimension,
    PricedEvent,
    Severity,
    decode,
    encode,
    subject_key,
)
from tollgate.ids import uuid7_unix_ms

ZERO = Decimal(0)
ACME = {Dimension.TENANT: "acme"}


def minute(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def spend(at: datetime, usd: Decimal | str, **who: Any) -> PricedEvent:
    """One call ending 0.85 s after ``at`` that cost ``usd``."""
    return make_priced(
        time=at,
        input_cost_usd=Decimal(usd),
        cache_read_cost_usd=ZERO,
        output_cost_usd=ZERO,
        **who,
    )


def steady(
    minutes: Iterable[int], per_minute: str = "0.50", seed: int = 7, **who: Any
) -> list[PricedEvent]:
    """Three calls a minute adding up to ``per_minute`` ± 20 %, over two keys and two models."""
    rng = random.Random(seed)
    rate = Decimal(per_minute)
    events = []
    for m in minutes:
        for i, second in enumerate((5, 25, 45)):
            usd = (rate / 3 * Decimal(rng.uniform(0.8, 1.2))).quantize(Decimal("0.000001"))
            key = {"api_key_id": "key_1", "request_model": "gpt-4o-mini"}
            if i == 2:
                key = {"api_key_id": "key_2", "request_model": "gpt-4o"}
            events.append(spend(minute(m) + timedelta(seconds=second), usd, **(key | who)))
    return events


def play(detector: AnomalyDetector, events: Iterable[PricedEvent], until: datetime) -> list[Alert]:
    alerts: list[Alert] = []
    for event in events:
        alerts += detector.observe(event)
    return alerts + detector.advance(until)


def timeline(*streams: Iterable[PricedEvent] | PricedEvent) -> list[PricedEvent]:
    """Events from several sources, in event-time order."""
    events: list[PricedEvent] = []
    for stream in streams:
        events += [stream] if isinstance(stream, PricedEvent) else stream
    return sorted(events, key=lambda e: e.end_time)


def new_spenders(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.kind is AlertKind.NEW_SPENDER]


def spike(m: float, usd: str = "15") -> PricedEvent:
    return spend(minute(m) + timedelta(seconds=30), usd, api_key_id="key_1", request_model="gpt-4o")


def test_steady_noisy_traffic_raises_no_alert() -> None:
    detector = AnomalyDetector()
    alerts = play(detector, steady(range(120)), until=minute(120))
    assert alerts == []
    baseline = detector.baseline(ACME)
    assert baseline is not None
    assert baseline.buckets == 120
    assert 0.45 < baseline.mean_usd < 0.55


def test_a_spike_raises_one_alert_with_expected_actual_impact_and_since() -> None:
    detector = AnomalyDetector()
    assert play(detector, steady(range(60)), until=minute(60)) == []
    spike_minute = [*steady([60], seed=60), spike(60)]
    actual = sum((e.cost_usd for e in spike_minute), ZERO)
    before = detector.baseline(ACME)
    assert before is not None

    alerts = play(detector, spike_minute + steady(range(61, 90), seed=61), until=minute(90))

    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.kind is AlertKind.COST_ANOMALY
    assert alert.actual_usd == actual
    assert alert.expected_usd == Decimal(before.mean_usd).quantize(Decimal("0.000001"))
    assert alert.impact_usd == alert.actual_usd - alert.expected_usd
    assert alert.since == minute(60)
    assert alert.time == minute(61)
    assert alert.severity is Severity.CRITICAL
    assert alert.score is not None
    assert alert.score >= 4
    assert alert.scope == {
        Dimension.TENANT: "acme",
        Dimension.TEAM: "search",
        Dimension.API_KEY: "key_1",
        Dimension.MODEL: "gpt-4o",
    }
    assert alert.subject == subject_key(alert.scope)
    assert alert.summary.startswith(f"acme spend is ${actual:.2f} in 1 min, expected $0.5")
    assert alert.summary.endswith("driven by team search, key key_1, model gpt-4o")
    assert uuid7_unix_ms(alert.alert_id) == int(minute(61).timestamp() * 1000)
    assert decode(encode(alert), Alert) == alert


def test_a_spike_does_not_poison_the_baseline() -> None:
    detector = AnomalyDetector()
    play(detector, [*steady(range(60)), spike(60)], until=minute(61))
    baseline = detector.baseline(ACME)
    assert baseline is not None
    assert baseline.mean_usd < 0.7


def test_a_spike_during_warmup_raises_none() -> None:
    detector = AnomalyDetector()
    alerts = play(detector, timeline(steady(range(60)), spike(10)), until=minute(60))
    assert alerts == []


@pytest.mark.parametrize(("min_impact", "alerts"), [("1.00", 0), ("0.50", 1)])
def test_a_small_spike_alerts_only_above_min_impact(min_impact: str, alerts: int) -> None:
    detector = AnomalyDetector(AnomalyConfig(min_impact_usd=Decimal(min_impact)))
    events = timeline(steady(range(60), per_minute="0.05"), spike(45, usd="0.80"))
    assert len(play(detector, events, until=minute(60))) == alerts


def test_cooldown_holds_back_a_second_spike_until_it_expires() -> None:
    detector = AnomalyDetector()
    events = timeline(steady(range(120)), spike(60), spike(65), spike(95))
    alerts = play(detector, events, until=minute(120))
    assert [a.since for a in alerts] == [minute(60), minute(95)]


def test_an_alert_after_the_cooldown_of_a_sustained_anomaly_says_since_when() -> None:
    detector = AnomalyDetector(AnomalyConfig(cooldown_s=120))
    events = timeline(steady(range(70)), spike(60), spike(61), spike(62))
    alerts = play(detector, events, until=minute(70))
    assert [(a.time, a.since) for a in alerts] == [
        (minute(61), minute(60)),
        (minute(63), minute(60)),
    ]


def test_an_anomaly_of_another_key_is_not_held_back_by_the_tenants_cooldown() -> None:
    detector = AnomalyDetector()
    second = spend(minute(65.5), "15", api_key_id="key_2", request_model="gpt-4o")
    alerts = play(detector, timeline(steady(range(90)), spike(60), second), until=minute(90))
    assert len(alerts) == 2
    assert alerts[1].scope == {Dimension.TENANT: "acme", Dimension.API_KEY: "key_2"}
    assert alerts[1].summary.startswith("acme key key_2 spend is $15.")


def test_quiet_gaps_are_learned_as_zero_spend() -> None:
    detector = AnomalyDetector()
    play(detector, steady(range(60), per_minute="2.00"), until=minute(240))
    baseline = detector.baseline(ACME)
    assert baseline is not None
    assert baseline.buckets == 240
    assert baseline.mean_usd < 0.001

    alerts = play(detector, steady([240], per_minute="2.50"), until=minute(241))
    assert len(alerts) == 1
    assert alerts[0].expected_usd is not None
    assert alerts[0].expected_usd < Decimal("0.001")


def test_the_same_spend_after_no_gap_is_normal() -> None:
    detector = AnomalyDetector()
    play(detector, steady(range(60), per_minute="2.00"), until=minute(60))
    assert play(detector, steady([60], per_minute="2.50"), until=minute(61)) == []


def test_a_late_event_counts_in_the_current_bucket() -> None:
    detector = AnomalyDetector()
    play(detector, steady(range(61)), until=minute(61))
    late = spike(50)
    alerts = play(detector, [late, *steady([61], seed=61)], until=minute(62))
    assert len(alerts) == 1
    assert alerts[0].since == minute(61)
    assert alerts[0].actual_usd is not None
    assert alerts[0].actual_usd > late.cost_usd


def test_a_new_key_spending_fast_is_reported_once() -> None:
    detector = AnomalyDetector()
    play(detector, steady(range(40)), until=minute(40))
    newcomer = [spend(minute(40 + i), "2.00", api_key_id="key_new") for i in range(6)]
    alerts = play(detector, newcomer, until=minute(50))
    assert len(new_spenders(alerts)) == 1
    alert = new_spenders(alerts)[0]
    assert alert.subject == "tenant=acme,api_key_id=key_new"
    assert alert.actual_usd == Decimal("6.00")
    assert alert.since == newcomer[0].end_time
    assert alert.time == newcomer[2].end_time
    assert alert.summary == "new key key_new of acme spent $6.00 in its first 2 min"


def test_keys_seen_while_the_tenant_is_learning_are_not_new() -> None:
    detector = AnomalyDetector()
    events = timeline(steady(range(40)), spend(minute(5), "9", api_key_id="key_early"))
    assert new_spenders(play(detector, events, until=minute(40))) == []


def test_spend_after_a_newcomers_first_window_does_not_count() -> None:
    detector = AnomalyDetector()
    play(detector, steady(range(40)), until=minute(40))
    slow = [spend(minute(m), "4", api_key_id="key_slow") for m in (40, 51)]
    assert new_spenders(play(detector, slow, until=minute(60))) == []


def scenario() -> list[PricedEvent]:
    globex = {"tenant": "globex", "team": "ml"}
    return timeline(
        steady(range(150), seed=3),
        steady(range(20, 150), seed=4, **globex),
        spike(70),
        spike(130),
        [spend(minute(m), "3", api_key_id="key_g9", **globex) for m in (100, 101)],
    )


def test_the_same_events_give_the_same_alerts() -> None:
    first = play(AnomalyDetector(), scenario(), until=minute(150))
    second = play(AnomalyDetector(), scenario(), until=minute(150))
    assert len(first) >= 4
    assert first == second


def test_a_detector_resumed_from_a_checkpoint_gives_the_same_alerts() -> None:
    events = scenario()
    uninterrupted = play(AnomalyDetector(), events, until=minute(150))

    detector = AnomalyDetector()
    resumed = play(detector, events[:300], until=events[299].end_time)
    checkpoint = json.loads(json.dumps(detector.to_dict()))
    detector = AnomalyDetector.from_dict(checkpoint)
    resumed += play(detector, events[300:], until=minute(150))

    assert resumed == uninterrupted


def test_idle_subjects_are_forgotten_after_a_week() -> None:
    detector = AnomalyDetector()
    play(detector, steady(range(10)), until=minute(10))
    play(detector, steady(range(10), tenant="globex"), until=minute(60 * 24 * 6))
    assert detector.baseline(ACME) is not None

    detector.advance(minute(60 * 24 * 7 + 11))
    assert detector.baseline(ACME) is None
    assert detector.to_dict()["seen"] == {}


def test_the_new_spender_memory_is_bounded() -> None:
    detector = AnomalyDetector(AnomalyConfig(max_seen=10))
    events = [spend(minute(i), "0.01", api_key_id=f"key_{i}") for i in range(50)]
    play(detector, events, until=minute(50))
    seen = detector.to_dict()["seen"]
    assert len(seen) == 10
    assert "tenant=acme,api_key_id=key_49" in seen


def test_a_tracked_scope_must_include_the_tenant() -> None:
    with pytest.raises(ValueError, match="must include the tenant"):
        AnomalyConfig(dimensions=((Dimension.MODEL,),))
