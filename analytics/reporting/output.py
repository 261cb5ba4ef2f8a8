"""One page of a query's result, written as JSON, CSV, Parquet or an Arrow IPC stream.

The format comes from ``format=`` if given, else from the ``Accept`` header, else JSON.
Money stays exact in every format: JSON and CSV write it as a decimal string (``"4.2"``,
never ``4.2000000001``), Parquet and Arrow keep ``decimal128``. Instants are ISO-8601 with
their offset; a bucket (a local time with no zone) is ISO-8601 without one.

JSON answers carry the page's columns (name and Arrow type) and ``next_offset``/``next``
for the following page; the binary and CSV answers carry the same in headers
(``X-Next-Offset`` and ``Link: <…>; rel="next"``).

Text in the lake is partly the callers' (a model name, a user, a tag), and a spreadsheet
runs a CSV cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
as a formula. So in CSV, a text cell beginning with one of those is written with a
leading ``'`` (OWASP's advice for CSV injection), which spreadsheets show as text and
hide; numbers, money, instants and JSON cells are never prefixed. JSON, Parquet and Arrow
carry text as typed strings, which no spreadsheet evaluates, and are written unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import HTTPException
from starlette.responses import Response


class OutputFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"
    ARROW = "arrow"
    """Arrow IPC stream format."""


MEDIA_TYPES: dict[OutputFormat, str] = {
    OutputFormat.JSON: "application/json",
    OutputFormat.CSV: "text/csv",
    OutputFormat.PARQUET: "application/vnd.apache.parquet",
    OutputFormat.ARROW: "application/vnd.apache.arrow.stream",
}
_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}
_WILDCARDS = {"*/*", "application/*", "text/*"}


def negotiate(requested: OutputFormat | None, accept: str | None) -> OutputFormat:
    """``requested`` if given; else the first supported type in ``accept``; else JSON.

    406 when ``accept`` names only types this API cannot write.
    """
    if requested is not None:
        return requested
    if not accept or not accept.strip():
        return OutputFormat.JSON
    media_types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media in media_types:
        if media in _BY_MEDIA_TYPE:
            return _BY_MEDIA_TYPE[media]
        if media in _WILDCARDS:
            return OutputFormat.JSON
    raise HTTPException(
        406,
        f"cannot answer as {accept!r}; send `format=` or Accept one of "
        + ", ".join(MEDIA_TYPES.values()),
    )


def render(
    table: pa.Table,
    fmt: OutputFormat,
    *,
    name: str,
    next_offset: int | None,
    next_url: str | None,
) -> Response:
    """``table`` as a response in ``fmt``, with where the next page starts."""
    headers: dict[str, str] = {}
    if next_offset is not None and next_url is not None:
        headers["X-Next-Offset"] = str(next_offset)
        headers["Link"] = f'<{next_url}>; rel="next"'
    if fmt is OutputFormat.JSON:
        body = {
            "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
            "rows": plain_rows(table),
            "next_offset": next_offset,
            "next": next_url,
        }
        content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    elif fmt is OutputFormat.CSV:
        content = _csv(table)
        headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    elif fmt is OutputFormat.PARQUET:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        content = sink.getvalue()
        headers["Content-Disposition"] = f'attachment; filename="{name}.parquet"'
    else:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        content = sink.getvalue()
        headers["Content-Disposition"] = f'attachment; filename="{name}.arrows"'
    return Response(content, media_type=MEDIA_TYPES[fmt], headers=headers)


def plain_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of ``table`` as JSON-ready dicts: money as exact strings."""
    columns = {}
    for field in table.schema:
        values = table.column(field.name).to_pylist()
        if pa.types.is_map(field.type):
            values = [None if pairs is None else dict(pairs) for pairs in values]
        columns[field.name] = [plain(value) for value in values]
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def plain(value: Any) -> Any:
    """One cell as JSON can hold it without losing anything."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value.is_finite() else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv(table: pa.Table) -> bytes:
    text = io.StringIO()
    # RFC 4180's CRLF: a cell holding CR or LF is then quoted, not split across lines.
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(table.schema.names)
    textual = [_is_text(field.type) for field in table.schema]
    for row in plain_rows(table):
        writer.writerow(
            _csv_cell(value, is_text) for value, is_text in zip(row.values(), textual, strict=True)
        )
    return text.getvalue().encode()


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _csv_cell(value: Any, is_text: bool) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if is_text and isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
