"""Contract codec throughput: Tollgate's validating msgspec codec vs. stdlib json.

The baseline is what a naive service would do: ``json.dumps`` a dict, and ``json.loads``
without any validation. Tollgate's decode validates every field and invariant, so a
ratio near or above 1 means validation is free on the hot path.

Run: .venv/bin/python bench/contract.py [--events 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.factories import make_priced, make_usage
from tollgate.contract import PricedEvent, UsageEvent, decode, encode


def rate(fn: Callable[[], object], count: int, rounds: int) -> float:
    """Median operations per second over ``rounds`` runs of ``count`` operations."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(count / (time.perf_counter() - start))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n, rounds = args.events, args.rounds

    rows = []
    for name, record, kind in [
        ("usage", make_usage(), UsageEvent),
        ("priced", make_priced(), PricedEvent),
    ]:
        wire = encode(record)
        as_dict = json.loads(wire)
        ours_enc = rate(lambda r=record: [encode(r) for _ in range(n)], n, rounds)
        base_enc = rate(lambda d=as_dict: [json.dumps(d).encode() for _ in range(n)], n, rounds)
        ours_dec = rate(lambda w=wire, k=kind: [decode(w, k) for _ in range(n)], n, rounds)
        base_dec = rate(lambda w=wire: [json.loads(w) for _ in range(n)], n, rounds)
        rows.append((f"{name} encode", ours_enc, base_enc))
        rows.append((f"{name} decode+validate", ours_dec, base_dec))

    print(f"{'operation':<24}{'tollgate/s':>14}{'json (no validation)/s':>26}{'ratio':>8}")
    for label, ours, base in rows:
        print(f"{label:<24}{ours:>14,.0f}{base:>26,.0f}{ours / base:>8.2f}")


if __name__ == "__main__":
    main()
