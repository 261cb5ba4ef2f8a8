"""The vocabulary of lake queries: what they group and filter by, and what they return.

Kept apart from the questions themselves (``analytics.queries``, which re-exports every
name here) so that the SQL-building parts can use it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Dimension(StrEnum):
    """What rows can be grouped and filtered by: the allowlist."""

    TENANT = "tenant"
    TEAM = "team"
    API_KEY = "api_key_id"
    USER = "user"
    MODEL = "model"
    """``request_model``, or ``response_model`` when the request named none."""
    PROVIDER = "provider"
    STATUS = "status"
    OPERATION = "operation"
    BACKEND = "backend"


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    """ISO weeks, starting on Monday, in the query's time zone."""
    MONTH = "month"


class Measure(StrEnum):
    """What top-N ranks by."""

    COST = "cost_usd"
    TOKENS = "total_tokens"
    REQUESTS = "requests"


Filters = Mapping[Dimension | str, Sequence[str]]
"""Dimension → allowed values (OR within a dimension, AND across dimensions)."""


class QueryError(ValueError):
    """An argument no query can be built from; the message says which and why."""


@dataclass(frozen=True)
class Query:
    """SQL over the lake's views, with ``?`` placeholders, and the values for them.

    ``sql`` never ends with LIMIT, so a pager may append ``LIMIT ? OFFSET ?``; its ORDER BY
    covers every output key (a query without keys returns one row), so pages never overlap.
    """

    sql: str
    params: tuple[Any, ...] = ()
    order_by: tuple[str, ...] = ()
    """Output columns whose order makes paging stable (already in ``sql``'s ORDER BY)."""
