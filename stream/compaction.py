"""Compaction: a closed day's small files merged into one file per topic partition,
with the day's rows kept exactly (less second copies).

The sink writes a file per partition every few seconds; a day of them is thousands of
small files, slow to list and to read. ``compact_day`` reads a date partition's range
files, drops second copies (priced events by ``event_id``, alerts by ``alert_id``,
keeping the copy at the lowest offset, as the sink does; budget states are history and
are kept as they are, but for a record written twice at the same offset), and writes,
per topic partition and generation, one compacted file named after the offsets of the
files it merged (``<topic>-p0003-g0000-c<first>-c<last>.parquet``). Then it deletes them.

Invariant — every row is seen exactly once by a reader listing files with
``tollgate.lake.live_files`` (as ``read_priced`` does), whenever compaction is cut:

- A compacted file appears whole (temporary name, rename), and only after every row it
  holds is in it. From that instant it *covers* the files it merged: they are
  superseded and no longer listed, though still on disk. So before the rename a reader
  sees the small files, after it the compacted one, never both.
- Deleting the merged files comes last; a compaction cut before (or during) it leaves
  superseded files that the next run deletes first.
- The newest range of each partition is never merged: it is the range a restarted sink
  reads again and completes (``stream.sink_files``), so the sink's resume point and its
  completion check stay readable from plain file names; and a completing sink never
  writes a date file a compacted file covers, so compacted offsets are not written again.
- A file the sink writes into the day while compaction runs holds offsets after every
  file compaction listed, so no compacted name covers it.

A reader that globs ``*.parquet`` instead (DuckDB over the lake) can see a merged file
twice in the moment between the rename and the delete, or until the next run after a
compaction that crashed there; the lake's rule for such readers holds: dedupe by
``event_id``.

A day is read whole into memory: fine for the days this lake is built for (millions of
rows); a much larger day wants a per-partition pass.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stream.sink_files import newest_ranges
from stream.sink_rows import ID_COLUMNS
from tollgate.lake import SCHEMAS, TMP_SUFFIX, lake_dates, partition_dir, write_parquet
from tollgate.lake_names import PARQUET_SUFFIX, RangeName, superseded

STALE_TMP_S = 600.0
"""A temporary file this old is a leftover of a crash (a write takes seconds at most)."""
_GENERATION = "__generation"
_ROW = "__row"


@dataclass(frozen=True)
class Compaction:
    """What ``compact_day`` did to one date partition of a sub-lake."""

    sub_lake: str
    day: date
    files_before: int
    files_after: int
    rows: int = 0
    duplicates: int = 0
    skipped: str | None = None
    """Why nothing was done, if nothing was."""

    def summary(self) -> str:
        where = f"{self.sub_lake} {self.day.isoformat()}"
        if self.skipped:
            return f"{where}: {self.skipped}"
        return (
            f"{where}: {self.files_before} files -> {self.files_after} "
            f"({self.rows:,} rows, {self.duplicates:,} second copies dropped)"
        )


def compact_day(
    lake: Path,
    sub_lake: str,
    day: date,
    *,
    force: bool = False,
    now: datetime | None = None,
    newest: set[RangeName] | None = None,
) -> Compaction:
    """Merge ``day``'s range files of ``sub_lake``; see the module docstring.

    ``day`` must be closed, before today's UTC date, unless ``force``: the sink writes
    today's partition all day long (compacting it is safe, only soon undone). ``newest``:
    ``sink_files.newest_ranges`` of the sub-lake, if the caller has it at hand.
    """
    directory = partition_dir(lake, day, sub_lake)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if not directory.is_dir():
        return Compaction(sub_lake, day, 0, 0, skipped="no such partition")
    before = _parquet_files(directory)
    if day >= today and not force:
        return Compaction(sub_lake, day, len(before), len(before), skipped="not closed yet")
    names = {path: name for path in before if (name := RangeName.parse(path.name)) is not None}
    if newest is None:
        newest = newest_ranges(lake, sub_lake)
    done = superseded(names.values())
    inputs = {p: n for p, n in names.items() if n not in done and n not in newest}
    leftovers = [p for p, n in names.items() if n in done and n not in newest]
    groups: dict[tuple[str, int, int], list[RangeName]] = defaultdict(list)
    for name in inputs.values():
        groups[name.source].append(name)
    _remove_stale_tmp(directory)
    if not leftovers and all(len(merged) < 2 for merged in groups.values()):
        return Compaction(sub_lake, day, len(before), len(before), skipped="nothing to merge")

    table = _read(inputs) if inputs else SCHEMAS[sub_lake].empty_table()
    kept = _first_copies(table, ID_COLUMNS.get(sub_lake)) if inputs else table
    written: set[Path] = set()
    for source, merged in sorted(groups.items()):
        name = RangeName(
            *source,
            first=min(n.first for n in merged),
            last=max(n.last for n in merged),
            compacted=True,
        )
        path = directory / name.file_name
        rows = _rows_of(kept, source)
        unchanged = (
            len(merged) == 1 and merged[0] == name and rows.num_rows == _count(table, source)
        )
        if not unchanged:
            write_parquet(_conform(rows, SCHEMAS[sub_lake]), path)
        written.add(path)
    for path in [*inputs, *leftovers]:
        if path not in written:
            path.unlink(missing_ok=True)
    after = _parquet_files(directory)
    return Compaction(
        sub_lake,
        day,
        len(before),
        len(after),
        rows=kept.num_rows,
        duplicates=table.num_rows - kept.num_rows,
    )


def compact_closed_days(
    lake: Path, sub_lake: str, *, now: datetime | None = None
) -> list[Compaction]:
    """Compact every closed day of ``sub_lake`` that has files to merge."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    newest = newest_ranges(lake, sub_lake)
    results = []
    for day in lake_dates(lake, sub_lake):
        if day < today:
            result = compact_day(lake, sub_lake, day, now=now, newest=newest)
            if result.skipped is None:
                results.append(result)
    return results


def _parquet_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(PARQUET_SUFFIX))


def _remove_stale_tmp(directory: Path) -> None:
    cutoff = time.time() - STALE_TMP_S
    for path in directory.glob(f"*{TMP_SUFFIX}"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)


def _read(files: dict[Path, RangeName]) -> pa.Table:
    """Every row of ``files``, tagged with its generation, in (topic, generation,
    partition, offset) order: a record's first copy comes first."""
    tables = []
    for path, name in sorted(files.items(), key=lambda item: item[1].file_name):
        table = pq.read_table(path)
        generation = pa.array([name.generation] * table.num_rows, pa.int32())
        tables.append(table.append_column(_GENERATION, generation))
    table = pa.concat_tables(tables, promote_options="default")
    return table.sort_by(
        [(column, "ascending") for column in ("_topic", _GENERATION, "_partition", "_offset")]
    )


def _first_copies(table: pa.Table, id_column: str | None) -> pa.Table:
    """The rows that are the first copy of their record (and of their id, if any)."""
    table = _first_by(table, ["_topic", _GENERATION, "_partition", "_offset"])
    if id_column is not None:
        table = _first_by(table, [id_column])
    return table


def _first_by(table: pa.Table, keys: list[str]) -> pa.Table:
    numbered = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    firsts = numbered.group_by(keys, use_threads=False).aggregate([(_ROW, "min")])
    if firsts.num_rows == table.num_rows:
        return table
    rows = firsts.column(f"{_ROW}_min")
    return table.take(pc.take(rows, pc.sort_indices(rows)))


def _rows_of(table: pa.Table, source: tuple[str, int, int]) -> pa.Table:
    topic, partition, generation = source
    mask = pc.and_(
        pc.and_(pc.equal(table["_topic"], topic), pc.equal(table["_partition"], partition)),
        pc.equal(table[_GENERATION], generation),
    )
    return table.filter(mask)


def _count(table: pa.Table, source: tuple[str, int, int]) -> int:
    return _rows_of(table, source).num_rows


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The sub-lake's columns first, in its order, then any a newer writer added."""
    names = [n for n in schema.names if n in table.column_names]
    names += [n for n in table.column_names if n not in schema.names and not n.startswith("__")]
    return table.select(names).replace_schema_metadata(schema.metadata)
