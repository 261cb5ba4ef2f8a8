"""Range files: how the sink lays a topic partition's records into the lake, and what a
restarted sink reads back from it.

The sink turns each topic partition into a sequence of *ranges*: consecutive records,
offsets ``first`` to ``last``. A range becomes one file per date its rows fall on, each
named after the whole range (``tollgate.lake.RangeName``), so the same range in two date
partitions has the same name in both. Writing keeps one invariant per partition:

    **Ranges are written one at a time, in offset order, and a range's date files in
    date order; each file appears whole (temporary name, fsync, rename).**

Hence, after a crash at any instant, every range but the newest one is complete in the
lake, and the newest may lack some of its date files (a crash between them). A restarted
sink therefore reads the newest range again, from its ``first`` offset, and ends it at
exactly its ``last`` offset, whatever its roll settings: the same records give the same
rows, and the same name. It writes the date files that are missing and leaves the ones
present (they appeared whole), then goes on from ``last + 1``. No offset is lost, and
none lands in two files of one date, whatever the restart. Records that gave no row
(duplicates, tombstones) make no file: a restart reads them again, which is harmless.

Compaction keeps the invariant readable: it never merges a partition's newest range
(the one a restart completes), and a compacted file's name covers the ranges it merged,
so the scan below still finds every partition's newest range and resume point.

The newest range is also the restart's check that the broker still holds the log the
lake came from: its record ``first`` must still be there with the timestamp the name
recorded. If it is not (a broker that lost its log numbers offsets from 0 again), the
sink starts a new *generation* of that partition from the log's beginning (see
``stream.sink_partition``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tollgate.lake import (
    ALERTS,
    BUDGET_STATE,
    EVALUATIONS,
    PRICED,
    SCHEMAS,
    lake_dates,
    partition_date,
    partition_dir,
    write_parquet,
)
from tollgate.lake_names import PARQUET_SUFFIX, RangeName, live_files

DATE_COLUMNS: dict[str, str] = {
    PRICED: "end_time",
    ALERTS: "time",
    BUDGET_STATE: "as_of_time",
    EVALUATIONS: "time",
}
"""The instant whose UTC date places a row of each sub-lake (see ``tollgate.lake``)."""


@dataclass(frozen=True)
class LakeFile:
    day: date
    name: RangeName
    path: Path


@dataclass
class PartitionHistory:
    """What the lake holds of one topic partition."""

    topic: str
    partition: int
    files: list[LakeFile] = field(default_factory=list)

    @property
    def generation(self) -> int:
        """The newest generation of the partition's log in the lake; 0 for none."""
        return max((f.name.generation for f in self.files), default=0)

    @property
    def newest(self) -> RangeName | None:
        """The range a restart reads again and completes: the newest one a sink wrote.

        None when nothing was written, or when a compacted file reaches further (which
        compaction avoids; then ``next_offset`` is resumed from, unchecked).
        """
        if not self.files:
            return None
        top = max(
            self.files, key=lambda f: (f.name.generation, f.name.last, not f.name.compacted)
        ).name
        if top.compacted:
            return None
        return top

    @property
    def next_offset(self) -> int | None:
        """The first offset of the newest generation no file holds; None for no file."""
        current = [f.name.last for f in self.files if f.name.generation == self.generation]
        return max(current) + 1 if current else None


def scan(lake: Path, sub_lake: str) -> dict[tuple[str, int], PartitionHistory]:
    """Every (topic, partition) with files in ``sub_lake``, from file names alone."""
    histories: dict[tuple[str, int], PartitionHistory] = {}
    for day in lake_dates(lake, sub_lake):
        directory = partition_dir(lake, day, sub_lake)
        for path in directory.iterdir():
            name = RangeName.parse(path.name)
            if name is None or not path.is_file():
                continue
            key = (name.topic, name.partition)
            if key not in histories:
                histories[key] = PartitionHistory(name.topic, name.partition)
            histories[key].files.append(LakeFile(day, name, path))
    return histories


def newest_ranges(lake: Path, sub_lake: str) -> set[RangeName]:
    """The newest range of every partition of ``sub_lake``: what compaction leaves alone."""
    return {h.newest for h in scan(lake, sub_lake).values() if h.newest is not None}


def recent_ids(history: PartitionHistory, id_column: str, since_offset: int) -> dict[str, int]:
    """The ids the lake holds from the partition's current generation at offsets from
    ``since_offset`` on, each with the offset it was kept at: the dedupe window's seed."""
    generation = history.generation
    paths = [
        str(f.path)
        for f in history.files
        if f.name.generation == generation and f.name.last >= since_offset
    ]
    if not paths:
        return {}
    dataset = ds.dataset(paths, format="parquet")
    table = dataset.to_table(
        columns=[id_column, "_offset"], filter=ds.field("_offset") >= since_offset
    )
    table = table.sort_by("_offset")
    first: dict[str, int] = {}
    for event_id, offset in zip(
        table.column(id_column).to_pylist(), table.column("_offset").to_pylist(), strict=True
    ):
        first.setdefault(event_id, offset)
    return first


def lake_ids(
    lake: Path, sub_lake: str, id_column: str, topic: str, partition: int, since: datetime
) -> set[str]:
    """The ids the lake holds from ``topic``'s ``partition``, any generation, of rows
    placed at ``since`` or later: what a new generation must not write again."""
    column = DATE_COLUMNS[sub_lake]
    paths = [
        str(path)
        for day in lake_dates(lake, sub_lake)
        if day >= partition_date(since)
        for path in live_files(partition_dir(lake, day, sub_lake))
    ]
    if not paths:
        return set()
    schema = SCHEMAS[sub_lake]
    dataset = ds.dataset(paths, schema=schema, format="parquet")
    condition = (
        (ds.field("_topic") == topic)
        & (ds.field("_partition") == partition)
        & (ds.field(column) >= pa.scalar(since, schema.field(column).type))
    )
    return set(dataset.to_table(columns=[id_column], filter=condition).column(0).to_pylist())


def write_range(
    lake: Path, sub_lake: str, name: RangeName, table: pa.Table, *, completing: bool = False
) -> list[Path]:
    """Write a range's rows, one file per date, oldest date first; the paths written.

    ``completing``: the range is a restart's re-read of the newest range, so a date file
    already there (it appeared whole) or covered by a compacted file is left as it is.
    """
    written = []
    for day, rows in split_by_date(table, DATE_COLUMNS[sub_lake]):
        path = partition_dir(lake, day, sub_lake) / name.file_name
        if completing and (path.exists() or _covered(path.parent, name)):
            continue
        write_parquet(rows, path)
        written.append(path)
    return written


def split_by_date(table: pa.Table, column: str) -> list[tuple[date, pa.Table]]:
    """The rows of each UTC date of ``column``, oldest date first, in their order."""
    if not table.num_rows:
        return []
    days = pc.cast(table.column(column), pa.date32())
    distinct = sorted(pc.unique(days).to_pylist())
    if len(distinct) == 1:
        return [(distinct[0], table)]
    return [(day, table.filter(pc.equal(days, pa.scalar(day, pa.date32())))) for day in distinct]


def _covered(directory: Path, name: RangeName) -> bool:
    if not directory.is_dir():
        return False
    names: Iterable[RangeName | None] = (
        RangeName.parse(p.name) for p in directory.glob(f"*{PARQUET_SUFFIX}")
    )
    return any(other is not None and other.covers(name) for other in names)
