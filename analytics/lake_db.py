"""The lake, opened read-only in DuckDB, with ready views.

Views (always defined, also over an empty or partly written lake):

- ``priced_usage``: every ``tollgate.lake.PRICED_SCHEMA`` column, plus ``date`` (the
  partition), ``model`` (``coalesce(request_model, response_model)``) and
  ``total_tokens`` (input + output).
- ``usage``: the same rows without the money columns: who, what, tokens, outcome.
- ``alerts``: ``ALERTS_SCHEMA`` rows.
- ``budget_state``: ``BUDGET_STATE_SCHEMA`` rows: every state published.
- ``evaluations``: ``EVALUATIONS_SCHEMA`` rows: quality signals about calls.
- ``evaluated_usage``: each evaluation (``evaluation_name``, ``score_value``,
  ``score_label``, ``explanation``, ``evaluator``, ``evaluated_at``) beside every
  ``priced_usage`` column of the call it judges (same ``event_id`` and tenant).
- ``prices``: the price catalog, one row per ``price_version`` with its per-token rates
  (``input_usd``, ``output_usd``, ``cache_read_usd``, ``cache_creation_usd``,
  ``cache_creation_1h_usd``, ``reasoning_usd``, ``per_request_usd``; base rates, not
  long-context tiers), for questions such as cache savings.

Files are listed when a query runs, so a long-lived ``Lake`` sees what the sink wrote
since; a file written later with a new column reads with nulls in the older files. The
views read exactly the *live* files (``tollgate.lake.live_files``, per date partition):
while a compaction is half done, or after one cut between its write and its deletes,
the small files a compacted file covers are not read, so no file's rows count twice.

Rows are taken to be unique by ``event_id``, and queries do not pay for deduplication
on every read. What remains possible is a second *copy of an event* in another file: the
meter may publish an event twice after a crash, and the sink drops a second copy only
within a window of offsets. Such a copy is counted twice until compaction merges its day
(days are compacted once closed) and drops it; until then totals can be high by it.

Results come as Arrow tables (``arrow``: money stays exact ``decimal128(38, 12)``) or as
pandas DataFrames (``frame``, ``sql``: money as float64, for plotting and arithmetic).
Each call runs on its own DuckDB cursor, so threads may share one ``Lake``.

Nothing is ever written to the lake: the DuckDB database is in memory and holds only
the views, and ``sql`` runs one ``SELECT`` statement (``WITH`` included) or a plain
``EXPLAIN`` of one; never ``EXPLAIN ANALYZE``, which runs what it explains.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from analytics import quality_queries, queries
from analytics.lake_files import LiveFiles
from analytics.lake_views import VIEWS, create_tables, define_view
from analytics.query_parts import QUERY_ERROR
from analytics.query_terms import Query, QueryError
from tollgate.pricing.catalog import PriceCatalog
from tollgate.pricing.catalog_file import load_catalog

_ANALYZE = frozenset({"analyze", "analyse"})
_FIRST_WORD = re.compile(r"\w+|\S")


def _asks(question: Callable[..., Query]) -> Callable[..., pd.DataFrame]:
    """A ``Lake`` method running ``question``: ``lake.spend(...)`` is
    ``lake.frame(queries.spend(...))``."""

    def ask(self: Lake, *args: Any, **kwargs: Any) -> pd.DataFrame:
        return self.frame(question(*args, **kwargs))

    ask.__name__ = ask.__qualname__ = question.__name__
    ask.__doc__ = f"``frame(queries.{question.__name__}(...))``.\n\n{question.__doc__}"
    ask.__wrapped__ = question  # type: ignore[attr-defined]  # help() shows its signature
    return ask


class Lake:
    """A read-only DuckDB session over one lake directory. Safe to share across threads."""

    def __init__(
        self, path: Path, *, catalog: PriceCatalog | None = None, threads: int | None = None
    ) -> None:
        """``catalog`` fills the ``prices`` view (the shipped catalog by default);
        ``threads`` caps DuckDB's worker threads (default: one per core)."""
        self.path = Path(path)
        config: dict[str, Any] = {}
        if threads is not None:
            config["threads"] = _whole_number(threads, "threads", 1)
        self._db = duckdb.connect(":memory:", config=config)
        for setting in (
            "SET GLOBAL TimeZone = 'UTC'",  # TIMESTAMPTZ results come back in UTC
            "SET GLOBAL parquet_metadata_cache = true",  # footers are read once per file
        ):
            self._db.execute(setting)
        self._lock = threading.Lock()
        self._files = LiveFiles(self.path)
        self._viewed: dict[str, tuple[Path, ...]] = {}
        """The files each view is defined over."""
        self.catalog = catalog or load_catalog()
        """The catalog of the ``prices`` view: the list prices re-pricing questions use."""
        create_tables(self._db, self.catalog)
        self._refresh(force=True)

    spend = _asks(queries.spend)
    top_spenders = _asks(queries.top_spenders)
    unit_costs = _asks(queries.unit_costs)
    cache_savings = _asks(queries.cache_savings)
    errors = _asks(queries.errors)
    budget_burn = _asks(queries.budget_burn)
    budget_status = _asks(queries.budget_status)
    recent_alerts = _asks(queries.recent_alerts)
    quality = _asks(quality_queries.quality)
    latency = _asks(quality_queries.latency)

    def frame(self, query: Query, *, limit: int | None = None, offset: int = 0) -> pd.DataFrame:
        """Run ``query`` into a DataFrame (money as float64, for plotting)."""
        return to_frame(self.arrow(query, limit=limit, offset=offset))

    def arrow(self, query: Query, *, limit: int | None = None, offset: int = 0) -> pa.Table:
        """Run ``query`` into an Arrow table (money as exact decimal128)."""
        sql, params = query.sql, list(query.params)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_whole_number(limit, "limit", 0))
        if offset:
            sql += " OFFSET ?"
            params.append(_whole_number(offset, "offset", 0))
        return self._run(sql, tuple(params))

    def sql(self, text: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
        """Any read-only SQL over the views, for notebooks."""
        cursor = self._cursor()
        try:
            check_read_only(cursor, text)
        finally:
            cursor.close()
        return to_frame(self._run(text, tuple(params)))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, sql: str, params: tuple[Any, ...]) -> pa.Table:
        for attempt in (1, 2):
            self._refresh()
            cursor = self._cursor()
            try:
                return cursor.sql(sql, params=params or None).to_arrow_table()
            except duckdb.IOException:
                # A file went away between the listing and the read (compaction deleted
                # the files its own file covers), or the lake was emptied: look again, once.
                if attempt == 2:
                    raise
                self._refresh(force=True)
            except duckdb.Error as error:
                message = str(error)
                if QUERY_ERROR in message:
                    raise QueryError(message.split(QUERY_ERROR, 1)[1]) from None
                raise
            finally:
                cursor.close()
        raise AssertionError("unreachable")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._db.cursor()

    def _refresh(self, *, force: bool = False) -> None:
        """Point each view at the live files of its sub-lake, if they are not the files
        it reads already. ``force`` lists every directory again and redefines every view."""
        with self._lock:
            if force:
                self._files.forget()
            for sub_lake in VIEWS:
                files = self._files.files(sub_lake)
                if force or files != self._viewed.get(sub_lake):
                    define_view(self._db, sub_lake, files)
                    self._viewed[sub_lake] = files


def check_read_only(connection: duckdb.DuckDBPyConnection, text: str) -> None:
    """``QueryError`` unless ``text`` is one ``SELECT`` (``WITH``, ``FROM``-first and
    ``DESCRIBE`` parse as one), or an ``EXPLAIN`` of one without ``ANALYZE``.

    ``EXPLAIN ANALYZE`` runs the statement it explains, so ``EXPLAIN ANALYZE COPY … TO``
    would write a file: the statement type alone (``EXPLAIN``) does not tell.
    """
    statements = connection.extract_statements(text)
    if len(statements) != 1:
        raise QueryError(f"run one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind is duckdb.StatementType.SELECT:
        return
    if kind is duckdb.StatementType.EXPLAIN:
        explained = connection.extract_statements(_explained(text))
        if len(explained) == 1 and explained[0].type is duckdb.StatementType.SELECT:
            return
        shown = explained[0].type.name if len(explained) == 1 else "a statement list"
        raise QueryError(f"the lake is read-only: EXPLAIN of {shown} is not run")
    raise QueryError(f"the lake is read-only: {kind.name} is not run")


def _explained(text: str) -> str:
    """The statement an ``EXPLAIN`` explains; ``QueryError`` for ``EXPLAIN ANALYZE`` in any
    spelling (``ANALYSE``, ``(ANALYZE)``, ``(FORMAT json, ANALYZE true)``)."""
    words = [
        (start, _FIRST_WORD.match(text, start).group(0).lower())  # type: ignore[union-attr]
        for start, kind in duckdb.tokenize(text)
        if kind is not duckdb.token_type.comment
    ]
    if not words or words[0][1] != "explain":
        raise QueryError("the lake is read-only: only EXPLAIN of a SELECT is run")
    at, depth = 1, 0
    while at < len(words):
        word = words[at][1]
        if word in _ANALYZE:
            raise QueryError("the lake is read-only: EXPLAIN ANALYZE is not run")
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0:
            return text[words[at][0] :]
        at += 1
    return ""


def to_frame(table: pa.Table) -> pd.DataFrame:
    """``table`` as a DataFrame, decimals as float64 (exact sums stay in the Arrow table)."""
    columns = [
        column.cast(pa.float64()) if pa.types.is_decimal(column.type) else column
        for column in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names).to_pandas()


def _whole_number(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QueryError(f"{what} must be a whole number, {minimum} or more, got {value!r}")
    return value
