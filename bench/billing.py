"""Billing figures: re-pricing and the FOCUS export over a seeded lake.

Both read every event of the range back into a contract record and price it with the
meter's own code, so they cost per event what SQL sums do not. Baseline in the same run:
the SQL question of the same shape (``queries.spend`` grouped by tenant and model over the
same range, through ``analytics.Lake``). Medians over ``--rounds``.

Run: .venv/bin/python bench/billing.py [--events 200000] [--days 30] [--rounds 3]
     [--workdir var/bench-billing]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics import Lake, queries
from analytics.focus import focus_table
from analytics.repricing import reprice
from analytics.seed import seed_lake
from tollgate.pricing import load_catalog


def timed(run: Callable[[], object], rounds: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tollgate-bench-billing-"))
    lake_path = workdir / f"lake-{args.events}"
    if not (lake_path / "priced").is_dir():
        seed_lake(lake_path, args.events, days=args.days, seed=3)
    catalog = load_catalog()
    lake = Lake(lake_path)
    bounds = lake.sql("SELECT min(end_time) AS first, max(end_time) AS last FROM priced_usage")
    start = bounds["first"][0].to_pydatetime()
    end = bounds["last"][0].to_pydatetime() + timedelta(seconds=1)

    baseline_s, _ = timed(
        lambda: lake.arrow(queries.spend(start, end, group_by=["tenant", "model"])), args.rounds
    )
    reprice_s, report = timed(lambda: reprice(lake_path, catalog, start, end), args.rounds)
    focus_s, rows = timed(lambda: focus_table(lake_path, catalog, start, end), args.rounds)
    lake.close()
    n = args.events
    print(f"{n:,} events over {args.days} days ({args.rounds} rounds, medians)")
    print(f"  SQL spend by tenant and model (baseline) {baseline_s * 1000:8.0f} ms")
    print(
        f"  reprice under the shipped catalog        {reprice_s * 1000:8.0f} ms  "
        f"{n / reprice_s:,.0f} events/s  ({report.num_rows} rows)"  # type: ignore[attr-defined]
    )
    print(
        f"  FOCUS export                             {focus_s * 1000:8.0f} ms  "
        f"{n / focus_s:,.0f} events/s  ({rows.num_rows} rows)"  # type: ignore[attr-defined]
    )


if __name__ == "__main__":
    main()
