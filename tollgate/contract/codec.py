"""Versioned JSON on the wire: the only way records enter or leave a topic.

Each record kind decodes as a union of the versions this build reads. A never-written
version 0 sits in every union: msgspec requires a struct's tag only when it decodes a
union, so that is what makes ``schema_version`` mandatory. When a v2 of a record
arrives, it joins its kind's union here and readers keep working across the change.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar, Union

import msgspec

from tollgate.contract.priced import PricedEvent, PricedEventV1
from tollgate.contract.record import Record
from tollgate.contract.usage import UsageEvent, UsageEventV1
from tollgate.errors import ContractError, UnsupportedSchemaVersion

R = TypeVar("R", bound=Record)


class _Unversioned(msgspec.Struct, tag_field="schema_version", tag=0):
    """Never written. Its presence in a union makes ``schema_version`` required."""


class _VersionProbe(msgspec.Struct):
    schema_version: Any = None


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoders: dict[type[Record], msgspec.json.Decoder[Any]] = {}
_probe = msgspec.json.Decoder(_VersionProbe)
_PATH = re.compile(r" - at (?:`key` in )?`\$\.?(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def encode(record: Record) -> bytes:
    """Serialize a record to compact JSON (money as decimal strings)."""
    return _encoder.encode(record)


def decode(data: bytes | str, record_type: type[R]) -> R:
    """Parse and validate one record of ``record_type``.

    Raises ``ContractError`` naming the offending field, or ``UnsupportedSchemaVersion``
    when the record was written by a version this build does not read.
    """
    decoder = _decoders.get(record_type)
    if decoder is None:
        versions = Union[(record_type, *_older_versions(record_type), _Unversioned)]
        decoder = _decoders[record_type] = msgspec.json.Decoder(versions)
    try:
        record = decoder.decode(data)
    except msgspec.ValidationError as error:
        raise _contract_error(error, data, record_type) from error
    except msgspec.DecodeError as error:
        raise ContractError(
            f"malformed JSON ({error})", record_type=record_type.__name__
        ) from error
    if isinstance(record, _Unversioned):
        raise _unsupported(record_type, 0)
    return record


_READ_ALSO: dict[type[Record], tuple[type[Record], ...]] = {
    UsageEvent: (UsageEventV1,),
    PricedEvent: (PricedEventV1,),
}
"""Older versions each record kind is still read in. An older version is a subclass of
the current one with its own tag, so what a reader gets is-a current record, the fields
the old version lacked at their defaults."""


def _older_versions(record_type: type[Record]) -> tuple[type[Record], ...]:
    return _READ_ALSO.get(record_type, ())


def versions_read(record_type: type[Record]) -> list[int]:
    """Every ``schema_version`` of ``record_type`` this build reads, oldest first."""
    kinds = (record_type, *_older_versions(record_type))
    return sorted(kind.schema_version() for kind in kinds)


def _contract_error(
    error: msgspec.ValidationError, data: bytes | str, record_type: type[R]
) -> ContractError:
    if isinstance(error.__cause__, ContractError):
        return error.__cause__
    message = str(error)
    match = _PATH.search(message)
    path = match.group("path") if match else None
    if path == "schema_version" or "`schema_version`" in message:
        version = _peek_version(data)
        if isinstance(version, int) and not isinstance(version, bool):
            return _unsupported(record_type, version)
        return ContractError(
            "missing or not an integer", record_type=record_type.__name__, field="schema_version"
        )
    if match:
        message = message[: match.start()]
    named = _NAMED.match(message)
    if named:
        path = ".".join(p for p in (path, named.group("name")) if p)
        message = "required field is missing" if "missing" in message else "unknown field"
    return ContractError(message, record_type=record_type.__name__, field=path or None)


def _unsupported(record_type: type[Record], version: int) -> UnsupportedSchemaVersion:
    return UnsupportedSchemaVersion(
        f"schema_version {version} is not supported (this build reads version "
        f"{', '.join(str(v) for v in versions_read(record_type))})",
        record_type=record_type.__name__,
        field="schema_version",
    )


def _peek_version(data: bytes | str) -> object:
    try:
        return _probe.decode(data).schema_version
    except msgspec.MsgspecError:
        return None
