"""Window math: calendar periods in local time across DST, sliding buckets, late events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from stream.budget_windows import (
    CALENDAR_GRACE_S,
    CalendarView,
    SlidingView,
    bucket_width_s,
    calendar_period,
)
from tollgate.contract import CalendarUnit

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("size_s", "width_s"),
    [(1, 1), (10, 1), (60, 1), (90, 2), (3600, 60), (86_400, 1440), (86_401, 1441)],
)
def test_bucket_width_is_a_sixtieth_of_the_window_rounded_up(size_s: int, width_s: int) -> None:
    assert bucket_width_s(size_s) == width_s


def test_new_york_day_is_25_hours_long_when_dst_ends() -> None:
    period = calendar_period(at("2026-11-01T12:00:00-05:00"), CalendarUnit.DAY, NEW_YORK)

    assert period.start == at("2026-11-01T04:00:00Z")  # midnight EDT
    assert period.end == at("2026-11-02T05:00:00Z")  # midnight EST
    assert period.end - period.start == timedelta(hours=25)


def test_new_york_day_is_23_hours_long_when_dst_starts() -> None:
    period = calendar_period(at("2026-03-08T12:00:00Z"), CalendarUnit.DAY, NEW_YORK)

    assert period.start == at("2026-03-08T05:00:00Z")
    assert period.end == at("2026-03-09T04:00:00Z")


def test_an_instant_belongs_to_the_local_day_not_the_utc_day() -> None:
    late_evening = at("2026-11-02T04:30:00Z")  # 23:30 on Nov 1 in New York

    period = calendar_period(late_evening, CalendarUnit.DAY, NEW_YORK)

    assert period.start == at("2026-11-01T04:00:00Z")


def test_week_starts_on_monday_in_local_time() -> None:
    sunday_evening = at("2026-11-08T22:00:00-05:00")

    period = calendar_period(sunday_evening, CalendarUnit.WEEK, NEW_YORK)

    assert period.start == at("2026-11-02T00:00:00-05:00")
    assert period.end == at("2026-11-09T00:00:00-05:00")


def test_berlin_october_spans_the_dst_change() -> None:
    period = calendar_period(at("2026-10-15T12:00:00Z"), CalendarUnit.MONTH, BERLIN)

    assert period.start == at("2026-09-30T22:00:00Z")  # midnight CEST
    assert period.end == at("2026-10-31T23:00:00Z")  # midnight CET


def test_december_rolls_over_to_january() -> None:
    period = calendar_period(at("2026-12-31T23:30:00Z"), CalendarUnit.MONTH, ZoneInfo("UTC"))

    assert period == (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))


def test_a_day_whose_midnight_does_not_exist_starts_when_clocks_jump() -> None:
    havana = ZoneInfo("America/Havana")  # 2024-03-10: 00:00 CST jumps to 01:00 CDT

    period = calendar_period(at("2024-03-10T12:00:00Z"), CalendarUnit.DAY, havana)

    assert period.start == at("2024-03-10T05:00:00Z")
    assert period.start.astimezone(havana).hour == 1


def test_sliding_bucket_leaves_one_window_after_its_end() -> None:
    now = at("2026-11-02T09:30:30Z")
    view = SlidingView(60, now)
    bucket = view.bucket_of(at("2026-11-02T09:30:00.500Z").timestamp())

    assert bucket is not None
    assert view.leaves_at(bucket) == at("2026-11-02T09:31:01Z").timestamp()


def test_sliding_event_older_than_the_window_is_late() -> None:
    view = SlidingView(60, at("2026-11-02T09:31:01Z"))

    assert view.bucket_of(at("2026-11-02T09:30:00.999Z").timestamp()) is None
    assert view.bucket_of(at("2026-11-02T09:30:01Z").timestamp()) is not None


def test_sliding_event_from_the_future_counts_from_now() -> None:
    now = at("2026-11-02T09:30:00Z")
    view = SlidingView(60, now)

    assert view.bucket_of((now + timedelta(hours=1)).timestamp()) == view.bucket_of(now.timestamp())


def test_previous_calendar_period_takes_late_events_during_its_grace() -> None:
    midnight = at("2026-11-02T00:00:00Z")
    yesterday = (midnight - timedelta(minutes=1)).timestamp()
    utc = ZoneInfo("UTC")

    in_grace = CalendarView(CalendarUnit.DAY, utc, midnight + timedelta(seconds=30))
    after_grace = CalendarView(
        CalendarUnit.DAY, utc, midnight + timedelta(seconds=CALENDAR_GRACE_S)
    )

    assert in_grace.bucket_of(yesterday) == in_grace.previous_key
    assert not in_grace.counts(in_grace.previous_key)
    assert after_grace.bucket_of(yesterday) is None
    assert not after_grace.is_live(after_grace.previous_key)
