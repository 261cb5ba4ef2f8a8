"""Window math for budgets: which bucket an event's spend lands in, and when it leaves.

A budget keeps its spend in *buckets*, keyed by an integer, so that its state stays
small whatever the traffic:

- A **sliding** window (``rolling`` in a definition: the last ``size_s`` seconds) keeps
  tumbling buckets of ``bucket_width_s(size_s)`` seconds, aligned to the Unix epoch and
  keyed by their index. A total is a sum over at most ~61 buckets. A bucket counts while
  any part of it is inside the window, so spend leaves at most one bucket width (1/60 of
  the window) *after* its exact time, never before: the error is on the budget's side.
- A **tumbling calendar** window (this day, week from Monday, or month, in an IANA time
  zone) keeps one bucket per period, keyed by the period's start in Unix seconds. Periods
  are computed on the local calendar and converted to UTC, so a day is 23 or 25 hours
  long across a DST change.

Late events land in the bucket of their event time. A sliding window counts them while
their bucket is still inside the window; a calendar window counts them in the current
period, or in the previous one until ``CALENDAR_GRACE_S`` after it closed. Anything older
is *late* and dropped. An event stamped after ``now`` (a gateway clock ahead of the
worker's) counts from ``now``, so a skewed clock cannot open buckets in the future.

Everything here is a function of ``now``: no clock is read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from tollgate.contract import BudgetWindow, CalendarUnit, WindowKind

BUCKETS_PER_WINDOW = 60
"""A sliding window is cut into this many buckets (fewer when it is under a minute)."""
CALENDAR_GRACE_S = 3600
"""How long after a calendar period closes late events are still counted in it."""

ROLLING_ALERT_WINDOW = 0
"""A sliding window has one alert window: thresholds re-arm as spend falls back."""

V = TypeVar("V")


def bucket_width_s(size_s: int) -> int:
    """Bucket width of a sliding window: ``size_s / 60`` rounded up, at least one second."""
    return max(1, -(-size_s // BUCKETS_PER_WINDOW))


def utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class Span(NamedTuple):
    """A half-open interval of time, ``[start, end)``, in UTC."""

    start: datetime
    end: datetime


def calendar_period(instant: datetime, unit: CalendarUnit, tz: ZoneInfo) -> Span:
    """The local day, week (from Monday) or month containing ``instant``, in UTC."""
    local = instant.astimezone(tz).date()
    if unit is CalendarUnit.DAY:
        first, following = local, local + timedelta(days=1)
    elif unit is CalendarUnit.WEEK:
        first = local - timedelta(days=local.weekday())
        following = first + timedelta(days=7)
    else:
        first = local.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return Span(_local_midnight(first, tz), _local_midnight(following, tz))


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of a local day.

    Where clocks jump forward at midnight (``00:00`` does not exist), ``fold=0`` reads it
    with the offset before the jump, which is exactly the instant the day begins.
    """
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


class WindowView(ABC):
    """A window as seen at one instant ``now``: where spend lands and what still counts.

    Buckets are grouped into *alert windows*, the unit thresholds are alerted once in:
    a calendar period (keyed like its bucket), or the one sliding window (key 0).
    """

    __slots__ = ("now", "now_s")

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.now_s = now.timestamp()

    @property
    @abstractmethod
    def span(self) -> Span:
        """The window at ``now``: its start, and the end of the spend counted now."""

    @property
    @abstractmethod
    def period_start(self) -> datetime | None:
        """The current calendar period's start; None for a sliding window."""

    @property
    @abstractmethod
    def current_window(self) -> int:
        """The alert window whose spend is the budget's spend at ``now``."""

    @abstractmethod
    def bucket_of(self, event_s: float) -> int | None:
        """The bucket of an event at ``event_s`` (Unix seconds), or None when it is late."""

    @abstractmethod
    def is_live(self, bucket: int) -> bool:
        """Whether the state still keeps ``bucket`` (counted now, or open to late events)."""

    @abstractmethod
    def counts(self, bucket: int) -> bool:
        """Whether ``bucket`` is part of the spend at ``now``."""

    @abstractmethod
    def leaves_at(self, bucket: int) -> float:
        """When ``bucket``'s spend stops counting, in Unix seconds."""

    @abstractmethod
    def alert_window(self, bucket: int) -> int:
        """The alert window ``bucket`` belongs to."""

    @abstractmethod
    def alert_span(self, alert_window: int) -> Span:
        """The span of an alert window, for the alert's text."""

    def live(self, buckets: Mapping[int, V]) -> dict[int, V]:
        """A copy of ``buckets`` without those no longer kept."""
        is_live = self.is_live
        return {bucket: value for bucket, value in buckets.items() if is_live(bucket)}

    def window_end(self, buckets: Iterable[int]) -> datetime:
        """When all spend counted now will have left the window."""
        return self.span.end


class SlidingView(WindowView):
    """The last ``size_s`` seconds before ``now``, in epoch-aligned buckets."""

    __slots__ = ("_span", "first_live", "size_s", "width_s")

    def __init__(self, size_s: int, now: datetime) -> None:
        super().__init__(now)
        self.size_s = size_s
        self.width_s = bucket_width_s(size_s)
        self.first_live = int((self.now_s - size_s) // self.width_s)
        """The oldest bucket still inside the window: the first whose end + size > now."""
        current = int(self.now_s // self.width_s)
        self._span = Span(now - timedelta(seconds=size_s), utc(self.leaves_at(current)))

    @property
    def span(self) -> Span:
        return self._span

    @property
    def period_start(self) -> datetime | None:
        return None

    @property
    def current_window(self) -> int:
        return ROLLING_ALERT_WINDOW

    def bucket_of(self, event_s: float) -> int | None:
        bucket = int(min(event_s, self.now_s) // self.width_s)
        return bucket if bucket >= self.first_live else None

    def is_live(self, bucket: int) -> bool:
        return bucket >= self.first_live

    def counts(self, bucket: int) -> bool:
        return bucket >= self.first_live

    def leaves_at(self, bucket: int) -> float:
        return (bucket + 1) * self.width_s + self.size_s

    def alert_window(self, bucket: int) -> int:
        return ROLLING_ALERT_WINDOW

    def alert_span(self, alert_window: int) -> Span:
        return self._span

    def live(self, buckets: Mapping[int, V]) -> dict[int, V]:
        first = self.first_live
        return {bucket: value for bucket, value in buckets.items() if bucket >= first}

    def window_end(self, buckets: Iterable[int]) -> datetime:
        # Buckets after now's exist only if a worker's clock went back.
        newest = max(buckets, default=None)
        if newest is None or self.leaves_at(newest) <= self._span.end.timestamp():
            return self._span.end
        return utc(self.leaves_at(newest))


class CalendarView(WindowView):
    """The calendar period containing ``now``, and the previous one during its grace."""

    __slots__ = ("_current", "_previous", "current_key", "previous_key", "previous_open")

    def __init__(self, unit: CalendarUnit, tz: ZoneInfo, now: datetime) -> None:
        super().__init__(now)
        self._current = calendar_period(now, unit, tz)
        self._previous = calendar_period(self._current.start - timedelta(microseconds=1), unit, tz)
        self.current_key = int(self._current.start.timestamp())
        self.previous_key = int(self._previous.start.timestamp())
        self.previous_open = self.now_s < self._previous.end.timestamp() + CALENDAR_GRACE_S

    @property
    def span(self) -> Span:
        return self._current

    @property
    def period_start(self) -> datetime | None:
        return self._current.start

    @property
    def current_window(self) -> int:
        return self.current_key

    def bucket_of(self, event_s: float) -> int | None:
        if event_s >= self.current_key:
            return self.current_key
        if self.previous_open and event_s >= self.previous_key:
            return self.previous_key
        return None

    def is_live(self, bucket: int) -> bool:
        # A bucket after the current period exists only if a worker's clock went back.
        return bucket >= self.current_key or (self.previous_open and bucket == self.previous_key)

    def counts(self, bucket: int) -> bool:
        return bucket == self.current_key

    def leaves_at(self, bucket: int) -> float:
        if bucket == self.previous_key:
            return self._previous.end.timestamp()
        return self._current.end.timestamp()

    def alert_window(self, bucket: int) -> int:
        return bucket

    def alert_span(self, alert_window: int) -> Span:
        return self._previous if alert_window == self.previous_key else self._current


def window_view(window: BudgetWindow, now: datetime) -> WindowView:
    """How ``window`` stands at ``now``."""
    if window.kind is WindowKind.ROLLING:
        assert window.size_s is not None
        return SlidingView(window.size_s, now)
    assert window.unit is not None
    return CalendarView(window.unit, ZoneInfo(window.timezone), now)
