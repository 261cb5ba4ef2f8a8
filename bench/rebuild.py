"""What a worker's rebuild from the lake costs, at start and after a broker loss.

A lake of N priced events that ended in the last hour (the dedupe window), three budgets
as in ``bench/stream.py``. Timed, in this process, medians over rounds: the rebuild of the
budget states alone (what a start did before the meter learned the lake's ids: the
baseline), and the rebuild that also collects the ids of the window's events (what a
start, and a worker after a broker loss, do now).

Run: .venv/bin/python bench/rebuild.py [--events 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.budget_definitions import BudgetIndex
from stream.rebuild import rebuild_from_lake
from stream.sink_files import split_by_date
from tollgate.contract import EACH as ANY
from tollgate.contract import BudgetDefinition, BudgetWindow, CalendarUnit, Dimension, WindowKind
from tollgate.lake import PRICED_SCHEMA, partition_dir, write_parquet

BUDGETS = [
    BudgetDefinition(
        budget_id="tenant-hour",
        scope={Dimension.TENANT: ANY},
        window=BudgetWindow(kind=WindowKind.ROLLING, size_s=3600),
        limit_tokens=10**12,
    ),
    BudgetDefinition(
        budget_id="team-day",
        scope={Dimension.TENANT: ANY, Dimension.TEAM: ANY},
        window=BudgetWindow(kind=WindowKind.CALENDAR, unit=CalendarUnit.DAY, timezone="UTC"),
        limit_tokens=None,
        limit_usd=Decimal(10**6),
    ),
    BudgetDefinition(
        budget_id="model-minute",
        scope={Dimension.MODEL: ANY},
        window=BudgetWindow(kind=WindowKind.ROLLING, size_s=60),
        limit_tokens=10**12,
    ),
]
FILE_ROWS = 100_000


def write_lake(lake: Path, events: int, now: datetime) -> None:
    """``events`` priced rows ending over the last hour, in files of ``FILE_ROWS``."""
    end_us = int(now.timestamp() * 1e6)
    for first in range(0, events, FILE_ROWS):
        count = min(FILE_ROWS, events - first)
        ends = [end_us - (events - first - i) * 3_600_000_000 // events for i in range(count)]
        columns: dict[str, pa.Array] = {}
        for field in PRICED_SCHEMA:
            if field.name == "event_id":
                values: list[object] = [str(uuid.uuid4()) for _ in range(count)]
            elif field.name in ("time", "end_time"):
                values = ends
            elif field.name == "tenant":
                values = [f"tenant-{i % 50}" for i in range(first, first + count)]
            elif field.name == "team":
                values = [f"team-{i % 5}" for i in range(first, first + count)]
            elif field.name == "request_model":
                values = [f"model-{i % 4}" for i in range(first, first + count)]
            elif field.name in ("input_tokens", "output_tokens"):
                values = [500] * count
            elif pa.types.is_decimal(field.type):
                values = [Decimal("0.001")] * count
            elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
                values = [0] * count
            elif pa.types.is_boolean(field.type):
                values = [False] * count
            elif pa.types.is_map(field.type):
                values = [[]] * count
            else:
                values = ["x"] * count
            columns[field.name] = pa.array(values, field.type)
        table = pa.table(columns, schema=PRICED_SCHEMA)
        for day, rows in split_by_date(table, "end_time"):
            write_parquet(rows, partition_dir(lake, day) / f"b{first}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    budgets = BudgetIndex(BUDGETS)
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-rebuild-") as workdir:
        lake = Path(workdir)
        now = datetime.now(UTC)
        write_lake(lake, args.events, now)
        since = now - timedelta(hours=1, seconds=1)
        timings: dict[str, list[float]] = {"states only": [], "states and ids": []}
        for _ in range(args.rounds):
            for name, ids_since in (("states only", None), ("states and ids", since)):
                began = time.perf_counter()
                rebuilt = rebuild_from_lake(lake, budgets, now, now, ids_since)
                timings[name].append(time.perf_counter() - began)
        print(f"rebuild from a lake of {args.events:,} events of the last hour, 3 budgets:")
        print(f"  subjects {len(rebuilt.states):,}, ids {len(rebuilt.event_ids):,}")
        base = statistics.median(timings["states only"])
        for name, seconds in timings.items():
            median = statistics.median(seconds)
            print(f"  {name:16s} median {median:6.2f} s  ratio {median / base:.2f}")


if __name__ == "__main__":
    main()
