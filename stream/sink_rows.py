"""Topic records to lake rows: one Arrow table per fetched batch, lineage filled in.

Priced events are many (the sink must keep up with the meter), so they take a fast path:
each record is decoded by msgspec into a plain struct whose fields have the contract's
field types, but with instants, money and the event id left as the strings they are on
the wire; the columns are then converted and checked by Arrow, vectorised. The checks
mirror ``PricedEvent``'s own (``__post_init__``): a row any of them doubts, or a record
the fast path cannot read (another schema version, a number where a string was
expected...), goes through ``tollgate.contract.decode`` and ``priced_to_table``, so the
contract stays the judge and both paths give the same rows. A record the contract
refuses, or whose cost has more decimals than the lake keeps, is rejected: counted and
logged by the sink, never written.

Alerts, budget states and evaluations are few; they take the contract's path only. Tombstones (a
``None`` value: a deleted budget subject on the compacted state topic) give no row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import accumulate, chain
from typing import Any, Literal, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tollgate.contract import (
    REJECTED_STATUSES,
    Alert,
    BudgetState,
    EvaluationEvent,
    Operation,
    PricedEvent,
    Status,
    UsageSource,
    decode,
)
from tollgate.contract.record import Name, NonNegativeInt, Tags
from tollgate.contract.usage import HttpStatus, Milliseconds
from tollgate.errors import ContractError
from tollgate.lake import (
    ALERTS,
    BUDGET_STATE,
    EVALUATIONS,
    INSTANT,
    MONEY,
    PRICED,
    PRICED_SCHEMA,
    alerts_to_table,
    evaluations_to_table,
    priced_to_table,
    states_to_table,
)


class SourceRecord(Protocol):
    """What the sink needs of a consumed record (aiokafka's ``ConsumerRecord`` has it)."""

    offset: int
    timestamp: int
    value: bytes | None


@dataclass
class Rows:
    """The rows of one batch of records, and the records refused on the way."""

    table: pa.Table
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(offset, reason) of each record refused."""


RowDecoder = Callable[[str, int, Sequence[SourceRecord]], Rows]
"""(topic, partition, records) → rows, in offset order."""

_OPERATIONS = Literal[tuple(o.value for o in Operation)]  # type: ignore[valid-type]
_STATUSES = Literal[tuple(s.value for s in Status)]  # type: ignore[valid-type]
_SOURCES = Literal[tuple(s.value for s in UsageSource)]  # type: ignore[valid-type]
_ZERO = "0"


class _PricedWire(
    msgspec.Struct,
    tag_field="schema_version",
    tag=PricedEvent.schema_version(),
    kw_only=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """``PricedEvent`` as it is on the wire, for the fast path; fields in its order."""

    event_id: str
    time: str
    end_time: str
    tenant: Name | None
    team: Name | None = None
    api_key_id: Name | None = None
    user: Name | None = None
    tags: Tags = {}
    provider: Name
    operation: _OPERATIONS
    request_model: Name | None = None
    response_model: Name | None = None
    backend: Name | None = None
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cache_read_input_tokens: NonNegativeInt = 0
    cache_creation_input_tokens: NonNegativeInt = 0
    reasoning_tokens: NonNegativeInt = 0
    usage_source: _SOURCES = UsageSource.REPORTED.value
    status: _STATUSES
    http_status: HttpStatus
    duration_ms: Milliseconds
    ttft_ms: Milliseconds | None = None
    streamed: bool = False
    cache_creation_1h_input_tokens: NonNegativeInt = 0
    token_budget: NonNegativeInt | None = None
    input_cost_usd: str = _ZERO
    cache_read_cost_usd: str = _ZERO
    cache_creation_cost_usd: str = _ZERO
    output_cost_usd: str = _ZERO
    request_cost_usd: str = _ZERO
    cost_usd: str = _ZERO
    price_version: Name
    price_fallback: bool = False
    list_cost_usd: str | None = None
    contract_version: Name | None = None


class _Unversioned(msgspec.Struct, tag_field="schema_version", tag=0):
    """Never written; in the union it makes ``schema_version`` required, as in the codec."""


class _OlderVersion(msgspec.Struct, tag_field="schema_version", tag=1):
    """A version 1 priced event (before ``token_budget``): read by the contract's path."""


_wire = msgspec.json.Decoder(_PricedWire | _OlderVersion | _Unversioned)
_FIELDS = _PricedWire.__struct_fields__
_COST_PARTS = (
    "input_cost_usd",
    "cache_read_cost_usd",
    "cache_creation_cost_usd",
    "output_cost_usd",
    "request_cost_usd",
)
_FROM_TEXT = frozenset(
    name for name in _FIELDS if PRICED_SCHEMA.field(name).type in (INSTANT, MONEY)
)
"""Instants and money: wire text, parsed by Arrow (which refuses a 13th decimal)."""
_CANONICAL_V7 = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
"""The text ``str(UUID)`` gives for a UUIDv7: anything else goes the contract's way."""
_RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
"""Instants as the contract writes them (Arrow's parser takes more, such as no seconds)."""
_SUM = pa.decimal128(30, 12)
"""Parts are summed at this precision (room for five of them under Arrow's 38 digits);
an amount too large for it fails the cast and takes the contract's path."""
_REJECTED = pa.array(sorted(status.value for status in REJECTED_STATUSES))


def decode_priced(topic: str, partition: int, records: Sequence[SourceRecord]) -> Rows:
    """The ``PRICED_SCHEMA`` rows of ``records``; see the module docstring."""
    values = [record.value for record in records]
    wire = _decode_all(values)
    if wire is not None:
        wire_at: list[int] = list(range(len(records)))
        slow_at: list[int] = []
    else:  # a tombstone or a record the fast path cannot read: sort them out one by one
        wire, wire_at, slow_at = [], [], []
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                row = _wire.decode(value)
            except msgspec.MsgspecError:
                slow_at.append(i)
                continue
            if row.__class__ is _PricedWire:
                wire.append(row)
                wire_at.append(i)
            else:
                slow_at.append(i)
    offsets = [records[i].offset for i in wire_at]
    try:
        fast, doubted = _fast_table(wire, topic, partition, offsets)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        fast, doubted = None, list(range(len(wire)))  # one bad value: let the contract sort it
    slow_at += [wire_at[i] for i in doubted]
    if not slow_at:
        assert fast is not None
        return Rows(fast)
    slow = _contract_rows(PricedEvent, priced_to_table, topic, partition, records, slow_at)
    if fast is not None and fast.num_rows:
        slow.table = pa.concat_tables([fast, slow.table]).sort_by("_offset")
    return slow


def _decode_all(values: list[bytes | None]) -> list[_PricedWire] | None:
    """Every value on the fast path (the common case, at C speed), or None."""
    if None in values:
        return None
    try:
        rows = list(map(_wire.decode, values))  # type: ignore[arg-type]
    except msgspec.MsgspecError:
        return None
    return rows if set(map(type, rows)) == {_PricedWire} else None


def _fast_table(
    rows: list[_PricedWire], topic: str, partition: int, offsets: list[int]
) -> tuple[pa.Table, list[int]]:
    """The rows as a table, less those a check doubts, and the indexes of those."""
    columns = _columns(rows)
    arrays: dict[str, pa.Array] = {}
    for name in _FIELDS:
        target = PRICED_SCHEMA.field(name).type
        values = columns[name]
        if name == "tags":
            arrays[name] = _map_array(values)
        elif name in _FROM_TEXT:
            text = arrays[f"_{name}_text"] = pa.array(values, pa.string())
            arrays[name] = text.cast(target)
        else:
            arrays[name] = pa.array(values, target)
    arrays["_topic"] = pa.array([topic] * len(rows), pa.string())
    arrays["_partition"] = pa.array([partition] * len(rows), pa.int32())
    arrays["_offset"] = pa.array(offsets, pa.int64())
    table = pa.Table.from_arrays([arrays[n] for n in PRICED_SCHEMA.names], schema=PRICED_SCHEMA)
    valid = _valid(arrays)
    if not valid.false_count:
        return table, []
    doubted = pc.indices_nonzero(pc.invert(valid)).to_pylist()
    return table.filter(valid), doubted


def _columns(rows: list[_PricedWire]) -> dict[str, Any]:
    """Field by field: the rows as tuples, transposed by numpy (at C speed, where taking
    each attribute of each row costs Python calls)."""
    if not rows:
        return {name: [] for name in _FIELDS}
    grid = np.array(list(map(msgspec.structs.astuple, rows)), dtype=object)
    return {name: grid[:, i] for i, name in enumerate(_FIELDS)}


def _valid(a: dict[str, pa.Array]) -> pa.Array:
    """Per row: does it pass ``UsageEvent``'s and ``PricedEvent``'s record checks?"""
    checks = [
        pc.match_substring_regex(a["event_id"], _CANONICAL_V7),
        pc.match_substring_regex(a["_time_text"], _RFC3339),
        pc.match_substring_regex(a["_end_time_text"], _RFC3339),
        pc.greater_equal(a["end_time"], a["time"]),
        pc.or_(pc.is_valid(a["tenant"]), pc.equal(a["status"], Status.REJECTED_AUTH.value)),
        pc.less_equal(
            pc.add_checked(a["cache_read_input_tokens"], a["cache_creation_input_tokens"]),
            a["input_tokens"],
        ),
        pc.less_equal(a["reasoning_tokens"], a["output_tokens"]),
        pc.less_equal(a["cache_creation_1h_input_tokens"], a["cache_creation_input_tokens"]),
        pc.or_(
            pc.invert(pc.is_in(a["status"], value_set=_REJECTED)),
            pc.equal(pc.add_checked(a["input_tokens"], a["output_tokens"]), 0),
        ),
    ]
    zero = pa.scalar(Decimal(0), MONEY)
    total = None
    for name in (*_COST_PARTS, "cost_usd"):
        checks.append(pc.greater_equal(a[name], zero))
    listed = a["list_cost_usd"]
    checks.append(pc.or_kleene(pc.is_null(listed), pc.greater_equal(listed, zero)))
    for name in _COST_PARTS:
        part = a[name].cast(_SUM)
        total = part if total is None else pc.add(total, part)
    checks.append(pc.equal(total, a["cost_usd"].cast(_SUM)))
    valid = checks[0]
    for check in checks[1:]:
        valid = pc.and_kleene(valid, check)
    return pc.fill_null(valid, False)


def _map_array(tags: Sequence[dict[str, str]]) -> pa.Array:
    offsets = [0, *accumulate(map(len, tags))]
    keys = list(chain.from_iterable(tags))
    items = list(chain.from_iterable(map(dict.values, tags)))
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), pa.array(items, pa.string())
    )


def decode_alerts(topic: str, partition: int, records: Sequence[SourceRecord]) -> Rows:
    """The ``ALERTS_SCHEMA`` rows of ``records``."""
    return _contract_rows(Alert, alerts_to_table, topic, partition, records)


def decode_states(topic: str, partition: int, records: Sequence[SourceRecord]) -> Rows:
    """The ``BUDGET_STATE_SCHEMA`` rows of ``records``; tombstones give none."""
    return _contract_rows(BudgetState, states_to_table, topic, partition, records)


def _contract_rows(
    record_type: type[Any],
    to_table: Callable[..., pa.Table],
    topic: str,
    partition: int,
    records: Sequence[SourceRecord],
    indexes: Sequence[int] | None = None,
) -> Rows:
    decoded: list[Any] = []
    lineage: list[tuple[str, int, int]] = []
    rejected: list[tuple[int, str]] = []
    for i in range(len(records)) if indexes is None else sorted(indexes):
        record = records[i]
        if record.value is None:
            continue
        try:
            item = decode(record.value, record_type)
            to_table([item])  # the lake refuses what does not fit it (a 13th decimal)
        except (ContractError, ValueError, OverflowError) as error:
            rejected.append((record.offset, str(error)))
            continue
        decoded.append(item)
        lineage.append((topic, partition, record.offset))
    return Rows(to_table(decoded, lineage), rejected)


def decode_evaluations(topic: str, partition: int, records: Sequence[SourceRecord]) -> Rows:
    """The ``EVALUATIONS_SCHEMA`` rows of ``records``."""
    return _contract_rows(EvaluationEvent, evaluations_to_table, topic, partition, records)


DECODERS: dict[str, RowDecoder] = {
    PRICED: decode_priced,
    ALERTS: decode_alerts,
    BUDGET_STATE: decode_states,
    EVALUATIONS: decode_evaluations,
}
"""How each sub-lake's topic is read."""

ID_COLUMNS: dict[str, str] = {
    PRICED: "event_id",
    ALERTS: "alert_id",
    EVALUATIONS: "evaluation_id",
}
"""The column copies of one record share, per sub-lake that has one (budget states
have none: a state published twice is two rows of history)."""
