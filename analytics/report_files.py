"""Reports written to files by the ``tollgate`` command: CSV or Parquet, money exact.

CSV cells are written as ``analytics.reporting.output`` writes them for the API (money
as plain decimal strings, instants in ISO-8601, maps as JSON), so a file and an API
answer of the same report are the same bytes; Parquet keeps the Arrow types.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.reporting.output import OutputFormat, render

SUFFIXES = {".csv": OutputFormat.CSV, ".parquet": OutputFormat.PARQUET}


def write_report(table: pa.Table, path: Path) -> None:
    """``table`` to ``path`` (``.csv`` or ``.parquet``), written whole or not at all."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: write a .csv or a .parquet file")
    tmp = path.with_name(path.name + ".tmp")
    if fmt is OutputFormat.PARQUET:
        pq.write_table(table, tmp)
    else:
        body = render(table, fmt, name=path.stem, next_offset=None, next_url=None).body
        tmp.write_bytes(bytes(body))
    os.replace(tmp, path)
