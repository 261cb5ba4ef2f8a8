"""UUIDv7 event ids: time-ordered, so ids sort by creation and index well.

Python 3.11's ``uuid`` module has no ``uuid7`` (it arrives in 3.14), so the RFC 9562
layout is built here: 48 bits of Unix milliseconds, then version and variant bits
around 74 random bits.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    """Return a new UUIDv7 for ``unix_ms`` (default: now)."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def uuid7_unix_ms(value: uuid.UUID) -> int:
    """The creation time, in Unix milliseconds, stamped into a UUIDv7."""
    return value.int >> 80


def uuid7_for(unix_ms: int, name: bytes) -> uuid.UUID:
    """A UUIDv7 for ``unix_ms`` whose other bits come from ``name``: the same name gives
    the same id, so a record re-made after a restart keeps its identity (receivers dedupe)."""
    rand = int.from_bytes(hashlib.blake2b(name, digest_size=10).digest(), "big")
    rand_a = rand >> 68
    rand_b = rand & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
