"""The lake's priced events as contract records, for the questions SQL cannot answer.

Pricing again (``repricing``) and the FOCUS export (``focus``) need each event whole,
priced by the catalog's own code, so they read rows back into ``PricedEvent``s rather
than sum columns in DuckDB. Reading is what every lake reader does: the live files of
the partitions that can hold the range, rows whose ``end_time`` is in ``[start, end)``;
here a second copy of an event (see ``tollgate.lake``) is also dropped, by ``event_id``.
Nothing is ever written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow.compute as pc

from analytics.query_parts import instant
from tollgate.contract import PricedEvent
from tollgate.lake import read_priced, table_to_priced


def lake_events(
    lake: Path, start: datetime, end: datetime, *, tenant_scope: str | None = None
) -> Iterator[PricedEvent]:
    """Each priced event ending in ``[start, end)`` once; only ``tenant_scope``'s if set.

    Raises ``QueryError`` for a naive or out-of-range instant, as every query does.
    """
    first, last = instant(start, "start"), instant(end, "end")
    seen: set[str] = set()
    for batch in read_priced(lake, first, last):
        if tenant_scope is not None:
            batch = batch.filter(pc.equal(batch.column("tenant"), tenant_scope))
        for event in table_to_priced(batch):
            event_id = str(event.event_id)
            if event_id in seen:
                continue
            seen.add(event_id)
            yield event
