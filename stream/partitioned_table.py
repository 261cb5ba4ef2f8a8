"""A Faust table whose keys say which partition they live in.

Faust writes a table change to the changelog partition of the *current event*. Agents
here read in batches (``take_events``), where a batch spans partitions and no single event
is current, so each key carries its source partition (``b"3|acme"``) and the change goes
to that partition's changelog. The table stays co-partitioned with its source topic: on a
rebalance, the worker that takes source partition 3 recovers exactly the keys of 3.
"""

from __future__ import annotations

from typing import Any

import faust

SEPARATOR = b"|"


def partition_key(partition: int, key: bytes) -> bytes:
    return b"%d|%s" % (partition, key)


class SourcePartitionedTable(faust.Table):  # type: ignore[misc]
    def partition_for_key(self, key: Any) -> int:
        return int(bytes(key).split(SEPARATOR, 1)[0])


def add_table(app: faust.App, name: str, partitions: int, **options: Any) -> faust.Table:
    """Register a ``SourcePartitionedTable`` on ``app`` (raw bytes keys and values)."""
    table = SourcePartitionedTable(
        app,
        name=name,
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        beacon=app.tables.beacon,
        **options,
    )
    return app.tables.add(table)
