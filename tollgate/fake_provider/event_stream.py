"""AWS's binary event-stream framing, written: what Bedrock's streaming answers are made of.

A message is a prelude (total length, headers length, the prelude's CRC32), the headers
(name, type 7 = string, value), the payload, and the CRC32 of everything before it. The
gateway reads these with botocore's parser; this writer exists because botocore only
reads them.
"""

from __future__ import annotations

import struct
from binascii import crc32

_STRING = 7


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message carrying ``payload`` under string ``headers``."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total_length = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded))
    prelude += struct.pack(">I", crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", crc32(message) & 0xFFFFFFFF)


def event(event_type: str, payload: bytes) -> bytes:
    """A JSON event message, as Bedrock sends each piece of an answer."""
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def exception(exception_type: str, payload: bytes) -> bytes:
    """An exception message: how Bedrock reports a failure inside a 200 stream."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def _header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return (
        struct.pack(">B", len(name_bytes))
        + name_bytes
        + struct.pack(">BH", _STRING, len(value_bytes))
        + value_bytes
    )
