"""A small lake of hand-priced calls under a contract, for the re-pricing and FOCUS tests.

Its figures are worked out by hand in the docstrings of the tests that use it.
"""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.factories import make_usage
from tollgate.contract import PricedEvent, Status
from tollgate.lake import partition_dir, priced_to_table, write_parquet
from tollgate.pricing import PriceCatalog, read_catalog_yaml

PRICES = """\
prices:
  - provider: openai
    model: gpt-4o
    effective_from: 2024-08-06
    input: 2.50
    output: 10.00
    cache_read: 1.25
  - provider: anthropic
    model: claude-sonnet-4
    effective_from: 2025-05-14
    input: 3.00
    output: 15.00
    cache_read: 0.30
    cache_creation: 3.75
    cache_creation_1h: 6.00
"""
FALLBACK = """\
fallback:
  effective_from: 2024-01-01
  input: 150
  output: 600
"""
LIST_PRICES = PRICES + FALLBACK
ACME_OPENAI_20_OFF = """\
contracts:
  - tenant: acme
    provider: openai
    effective_from: 2026-01-01
    discount_pct: 20
"""
DAY = datetime(2026, 3, 10, 9, tzinfo=UTC)
START = "2026-03-01T00:00:00Z"
END = "2026-04-01T00:00:00Z"


def billed_catalog() -> PriceCatalog:
    """The catalog the lake was priced with: list prices and acme's OpenAI contract."""
    return read_catalog_yaml(LIST_PRICES + ACME_OPENAI_20_OFF)


def billed_events() -> list[PricedEvent]:
    catalog = billed_catalog()

    def call(**fields: object) -> PricedEvent:
        defaults: dict[str, object] = {
            "request_model": "gpt-4o",
            "response_model": "gpt-4o-2024-08-06",
            "cache_read_input_tokens": 0,
            "time": DAY,
            "tags": {"env": "prod"},
        }
        defaults.update(fields)
        return catalog.price(make_usage(**defaults))

    gpt = {"input_tokens": 1_000_000, "cache_read_input_tokens": 400_000, "output_tokens": 100_000}
    return [
        call(**gpt),
        call(**gpt),
        call(
            provider="anthropic",
            request_model="claude-sonnet-4",
            response_model=None,
            input_tokens=100_000,
            cache_creation_input_tokens=20_000,
            cache_creation_1h_input_tokens=10_000,
            output_tokens=10_000,
        ),
        call(tenant="globex", team=None, input_tokens=1_000, output_tokens=0, tags={}),
        call(
            status=Status.REJECTED_BUDGET,
            http_status=429,
            input_tokens=0,
            output_tokens=0,
        ),
    ]


def write_billed_lake(lake: Path) -> list[PricedEvent]:
    """The events, in two files of their day; the first event has a second copy."""
    events = billed_events()
    day = partition_dir(lake, (DAY + timedelta(seconds=1)).date())
    write_parquet(priced_to_table(events), day / "a.parquet")
    write_parquet(priced_to_table(events[:1]), day / "b.parquet")
    return events


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_command(prefix: str) -> list[str]:
    """The one command line of the README that starts with ``prefix``, split as a shell
    would, with ``tollgate`` run from this environment."""
    (line,) = [line.strip() for line in README.read_text().splitlines() if line.startswith(prefix)]
    words = shlex.split(line)
    return [sys.executable, "-m", "tollgate.cli", *words[1:]]
