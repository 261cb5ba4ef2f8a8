"""Window math for budgets, as the stream uses it.

It lives in ``tollgate.budget_windows``: a gateway enforcing a subject the stream has not
published yet computes its window exactly as the stream will.
"""

from __future__ import annotations

from tollgate.budget_windows import (
    BUCKETS_PER_WINDOW,
    CALENDAR_GRACE_S,
    ROLLING_ALERT_WINDOW,
    CalendarView,
    SlidingView,
    Span,
    WindowView,
    bucket_width_s,
    calendar_period,
    utc,
    window_view,
)

__all__ = [
    "BUCKETS_PER_WINDOW",
    "CALENDAR_GRACE_S",
    "ROLLING_ALERT_WINDOW",
    "CalendarView",
    "SlidingView",
    "Span",
    "WindowView",
    "bucket_width_s",
    "calendar_period",
    "utc",
    "window_view",
]
