"""Compaction: a closed day's files merged with its rows kept exactly, safe to cut at any
point, and a restarted sink that does not write compacted offsets again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from stream.compaction import compact_day
from stream.sink_files import write_range
from tests.factories import T0, make_alert, make_priced, make_state
from tests.test_sink import (
    lake_table,
    lineage,
    priced_records,
    produce,
    range_files,
    running_sink,
    sink_settings,
    until_rows,
)
from tollgate.contract import PricedEvent
from tollgate.lake import (
    ALERTS,
    BUDGET_STATE,
    PRICED,
    alerts_to_table,
    partition_dir,
    priced_to_table,
    read_priced,
    states_to_table,
)
from tollgate.lake_names import RangeName, live_files, superseded
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(60)

TOPIC = "tollgate.priced.v1"
ALERTS_TOPIC = "tollgate.alerts.v1"
STATES_TOPIC = "tollgate.budget-state.v1"
DAY = T0.date()
LATER = datetime.combine(DAY + timedelta(days=3), datetime.min.time(), UTC)
"""A ``now`` at which ``DAY`` and the day after are closed."""


def write_ranges(
    lake: Path, events: list[PricedEvent], partition: int, per_range: int, first: int = 0
) -> list[RangeName]:
    """``events`` as the sink writes them: ranges of ``per_range`` offsets, a file per date."""
    names = []
    for start in range(0, len(events), per_range):
        chunk = events[start : start + per_range]
        offsets = range(first + start, first + start + len(chunk))
        name = RangeName(TOPIC, partition, 0, offsets[0], offsets[-1], 1_000 + offsets[0])
        table = priced_to_table(chunk, [(TOPIC, partition, o) for o in offsets])
        write_range(lake, PRICED, name, table)
        names.append(name)
    return names


def two_days(count: int, tenant: str) -> list[PricedEvent]:
    return [
        make_priced(tenant=tenant, time=T0 + timedelta(days=i % 2, minutes=i)) for i in range(count)
    ]


def day_rows(lake: Path, day: date) -> pa.Table:
    since = datetime.combine(day, datetime.min.time(), UTC)
    batches = list(read_priced(lake, since, since + timedelta(days=1)))
    table = pa.Table.from_batches(batches) if batches else pa.table({})
    return table.sort_by([("_partition", "ascending"), ("_offset", "ascending")])


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# -- merging -------------------------------------------------------------------------------


def test_a_closed_day_becomes_one_file_per_partition_with_the_same_rows(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    acme, globex = two_days(40, "acme"), two_days(40, "globex")
    # Three events of acme were published twice; the copies sit at offsets 24 to 26.
    copies = [acme[2], acme[4], acme[6]]
    write_ranges(lake, acme[:24] + copies + acme[24:], partition=0, per_range=8)
    write_ranges(lake, globex, partition=1, per_range=8)
    before = day_rows(lake, DAY)
    directory = partition_dir(lake, DAY)
    assert len(names_in(directory)) == 11

    result = compact_day(lake, PRICED, DAY, now=LATER)

    copy_rows = {("acme", o) for o in range(24, 27)}
    kept = before.filter(
        pa.array([(t, o) not in copy_rows for t, o in zip(
            before["tenant"].to_pylist(), before["_offset"].to_pylist(), strict=True)])
    )  # fmt: skip
    assert day_rows(lake, DAY).equals(kept)
    assert result.duplicates == 3
    names = [RangeName.parse(name) for name in names_in(directory)]
    compacted = sorted((n.partition, n.first) for n in names if n and n.compacted)
    assert compacted == [(0, 0), (1, 0)]
    # Each partition's newest range is left for a restarted sink to complete.
    assert sorted(n.last for n in names if n and not n.compacted) == [39, 42]
    assert day_rows(lake, DAY + timedelta(days=1)).num_rows == 40  # the next day untouched


def test_a_compaction_cut_before_its_deletes_leaves_every_row_seen_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_ranges(lake, two_days(40, "acme"), partition=0, per_range=5)
    directory = partition_dir(lake, DAY)
    before = day_rows(lake, DAY)
    saved = tmp_path / "saved"
    shutil.copytree(directory, saved)
    compact_day(lake, PRICED, DAY, now=LATER)
    after = names_in(directory)
    # The crash: the compacted file is in place, the merged files not yet deleted.
    for path in saved.iterdir():
        if not (directory / path.name).exists():
            shutil.copy2(path, directory / path.name)
    assert len(names_in(directory)) > len(after)

    assert day_rows(lake, DAY).equals(before)
    assert len(live_files(directory)) == len(after)

    compact_day(lake, PRICED, DAY, now=LATER)  # the next run finishes the job
    assert names_in(directory) == after
    assert day_rows(lake, DAY).equals(before)


def test_today_is_left_alone_unless_forced(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_ranges(lake, two_days(20, "acme"), partition=0, per_range=2)
    directory = partition_dir(lake, DAY)
    files = names_in(directory)
    today = datetime.combine(DAY, datetime.min.time(), UTC) + timedelta(hours=12)

    assert compact_day(lake, PRICED, DAY, now=today).skipped == "not closed yet"
    assert names_in(directory) == files

    compact_day(lake, PRICED, DAY, now=today, force=True)
    assert len(names_in(directory)) == 2  # the compacted file and the newest range


def test_alerts_lose_their_second_copies_and_budget_states_are_kept_as_they_are(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    alerts = [make_alert(time=T0 + timedelta(minutes=i)) for i in range(7)]
    # Alerts 0 and 1 were published twice (offsets 6 and 7); offset 8 is the newest range.
    for first, chunk in ((0, alerts[:3]), (3, alerts[3:6]), (6, alerts[:2]), (8, alerts[6:])):
        offsets = range(first, first + len(chunk))
        name = RangeName(ALERTS_TOPIC, 0, 0, offsets[0], offsets[-1], 7)
        table = alerts_to_table(chunk, [(ALERTS_TOPIC, 0, o) for o in offsets])
        write_range(lake, ALERTS, name, table)
    # The same state published three times is three rows of history.
    states = [make_state(as_of_time=T0)] * 3 + [make_state(as_of_time=T0, spent_tokens=1)]
    for offset, state in enumerate(states):
        name = RangeName(STATES_TOPIC, 0, 0, offset, offset, 7)
        table = states_to_table([state], [(STATES_TOPIC, 0, offset)])
        write_range(lake, BUDGET_STATE, name, table)

    alert_result = compact_day(lake, ALERTS, DAY, now=LATER)
    state_result = compact_day(lake, BUDGET_STATE, DAY, now=LATER)

    assert Counter(lake_table(lake, ALERTS)["alert_id"].to_pylist()) == Counter(
        str(alert.alert_id) for alert in alerts
    )
    assert alert_result.duplicates == 2
    assert lake_table(lake, BUDGET_STATE)["_offset"].to_pylist() == [0, 1, 2, 3]
    assert state_result.duplicates == 0


# -- with the sink ----------------------------------------------------------------------------


async def test_a_sink_restarted_after_compaction_does_not_write_compacted_offsets_again(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    settings = sink_settings(kafka_settings, lake, sink_roll_rows=10)
    tenants = ("acme", "globex", "initech")
    sent: list[PricedEvent] = []
    placed = []
    async with running_sink(settings, broker):
        for _ in range(3):  # three ranges (at least) of partition 0, each over both days
            chunk = [
                make_priced(tenant=tenants[i % 3], time=T0 + timedelta(days=i % 2, seconds=i))
                for i in range(30)
            ]
            records = priced_records(chunk)
            placed += await produce(kafka_settings, broker, topics.priced, records, partition=0)
            sent += chunk
            await until_rows(lake, len(sent))
    # A crash had cut the newest range between its two date files, then compaction ran.
    newest = max(range_files(lake).values(), key=lambda name: name.last)
    cut = max(path for path, name in range_files(lake).items() if name == newest)
    cut.unlink()
    for day in (DAY, DAY + timedelta(days=1)):
        assert compact_day(lake, PRICED, day, now=LATER).skipped is None
    compacted = {p: p.stat().st_mtime_ns for p, n in range_files(lake).items() if n.compacted}
    assert compacted

    async with running_sink(settings, broker):
        chunk = [
            make_priced(tenant=tenants[i % 3], time=T0 + timedelta(seconds=i)) for i in range(30)
        ]
        placed += await produce(kafka_settings, broker, topics.priced, priced_records(chunk))
        sent += chunk
        await until_rows(lake, len(sent))

    table = lake_table(lake, PRICED)
    assert Counter(table["event_id"].to_pylist()) == Counter(str(e.event_id) for e in sent)
    assert sorted(lineage(table)) == sorted(placed)
    assert cut.exists()  # completed by the restart
    assert {p: p.stat().st_mtime_ns for p in compacted} == compacted
    for directory in {path.parent for path in range_files(lake)}:
        names = [RangeName.parse(path.name) for path in directory.glob("*.parquet")]
        assert not superseded(n for n in names if n is not None), names_in(directory)


def test_compact_every_keeps_merging_closed_days_until_stopped(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    events = two_days(30, "acme")
    write_ranges(lake, events, partition=0, per_range=6)  # offsets 0-29, five ranges
    before = day_rows(lake, DAY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.cli", "compact", "--every", "0.2"],
        env={**env, "TOLLGATE_LAKE_PATH": str(lake)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    directory = partition_dir(lake, DAY)
    deadline = time.monotonic() + 30

    def wait_for(names: list[str]) -> None:
        while [name.split("-g0000-")[1] for name in names_in(directory)] != names:
            assert process.poll() is None, "compact --every exited"
            assert time.monotonic() < deadline, names_in(directory)
            time.sleep(0.1)

    try:
        # Everything but the newest range (which a restarted sink may still complete).
        wait_for([f"c{0:020d}-c{23:020d}.parquet", f"o{24:020d}-o{29:020d}-t1024.parquet"])
        # A later range makes that one mergeable: the next round takes it in.
        write_ranges(
            lake, [make_priced(tenant="acme", time=T0)], partition=0, per_range=1, first=30
        )
        wait_for([f"c{0:020d}-c{29:020d}.parquet", f"o{30:020d}-o{30:020d}-t1030.parquet"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
    after = day_rows(lake, DAY)
    assert after.num_rows == before.num_rows + 1
    assert set(before["event_id"].to_pylist()) < set(after["event_id"].to_pylist())
