"""What quality signals add to the gateway's per-call work, beside what they replace.

Per call the gateway now issues a tenant-bound request id (``gateway.request_ids``)
instead of a plain UUIDv7, and feeds two latency histograms per route model and backend
(``gateway.latency_metrics``) besides its other metrics. Each is timed side by side with
its baseline in the same run: ``uuid7()``, and ``GatewayMetrics.observe_call`` without the
latency observer. The gateway spends roughly 300-850 µs of CPU per call (bench/gateway.py),
so these are to be read against that.

Run: .venv/bin/python bench/quality.py [--calls 50000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.latency_metrics import LatencyMetrics
from gateway.metrics import GatewayMetrics
from gateway.request_ids import RequestIds
from gateway.routes import RoutesConfig
from tests.factories import make_usage
from tollgate.ids import uuid7


def per_call_us(fn: Callable[[], object], count: int, rounds: int) -> float:
    """Median microseconds per call over ``rounds`` runs of ``count`` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        samples.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n, rounds = args.calls, args.rounds

    ids = RequestIds(b"k" * 32)
    routes = RoutesConfig.model_validate(
        {
            "backends": [{"name": "b0", "kind": "openai", "base_url": "http://127.0.0.1:1"}],
            "models": {"gpt-4o-mini": ["b0"], "gpt-4o-*": ["b0"]},
        }
    )
    event = make_usage(ttft_ms=120.0, streamed=True, backend="b0")
    plain, timed = GatewayMetrics(), GatewayMetrics()
    timed.also_observe(LatencyMetrics(timed.registry, routes).observe)

    issued = ids.issue("acme")
    rows = [
        ("issue a request id", per_call_us(lambda: ids.issue("acme"), n, rounds),
         per_call_us(uuid7, n, rounds), "uuid7()"),
        ("check a request id", per_call_us(lambda: ids.belongs_to(issued, "acme"), n, rounds),
         per_call_us(lambda: issued.version, n, rounds), "reading its version"),
        ("metrics per call", per_call_us(lambda: timed.observe_call(event), n, rounds),
         per_call_us(lambda: plain.observe_call(event), n, rounds), "without latency"),
    ]  # fmt: skip
    print(f"{'operation':<22}{'µs/call':>10}{'baseline µs':>14}  baseline")
    for label, ours, base, what in rows:
        print(f"{label:<22}{ours:>10.2f}{base:>14.2f}  {what}")


if __name__ == "__main__":
    main()
