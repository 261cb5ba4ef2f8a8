"""Analytics: DuckDB over the Parquet lake, for notebooks and the reporting API.

``Lake`` opens a lake read-only with ready views; ``analytics.queries`` builds the
questions (spend, top spenders, unit costs, cache savings, errors, budgets, alerts) that
``Lake.frame`` and ``Lake.arrow`` answer; ``seed_lake`` writes a synthetic lake to try
them on::

    from analytics import Lake, queries
    lake = Lake(Path("var/lake"))
    lake.frame(queries.spend(start, end, group_by=["team"], granularity="day"))
"""

from analytics import queries
from analytics.lake_db import Lake
from analytics.query_terms import Dimension, Filters, Granularity, Measure, Query, QueryError
from analytics.seed import SeedSummary, seed_lake

__all__ = [
    "Dimension",
    "Filters",
    "Granularity",
    "Lake",
    "Measure",
    "Query",
    "QueryError",
    "SeedSummary",
    "queries",
    "seed_lake",
]
