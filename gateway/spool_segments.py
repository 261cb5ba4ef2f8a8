"""The spool's segment files: how records are framed, found, and made durable.

A segment is created full of zeros (so that an append changes no metadata and
a synchronous write has nothing to journal) and holds records framed as ``length (4 bytes; the top
bit marks a refused call's record; 0 ends the records) · CRC32 of the payload (4 bytes) ·
payload``, big endian. Files are created mode 600 in a directory of mode 700.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct(">II")
REFUSED_BIT = 1 << 31
LENGTH_MASK = REFUSED_BIT - 1
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


@dataclass(frozen=True)
class Tally:
    """What a scan found: where the valid records end, how many, refused calls' bytes."""

    end: int
    records: int
    refused_bytes: int


def scan(path: Path, start: int = 0, stop: int | None = None) -> Tally:
    """Where the valid records from ``start`` end, how many, and the refused calls' bytes."""
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read() if stop is None else file.read(stop - start)
    offset = records = refused_bytes = 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        if length == 0:  # the zeros a segment is created with: the end
            break
        size = length & LENGTH_MASK
        payload_start = offset + HEADER.size
        payload_end = payload_start + size
        if payload_end > len(data) or zlib.crc32(data[payload_start:payload_end]) != crc:
            break
        if length & REFUSED_BIT:
            refused_bytes += payload_end - offset
        offset = payload_end
        records += 1
    return Tally(start + offset, records, refused_bytes)


def create_segment(path: Path, size: int, synchronous: bool = True) -> int:
    """A new segment file of ``size`` zero bytes, fsynced; its descriptor, open to write
    (``synchronous``: with ``O_DSYNC``, so that a write returns once its data is on disk)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        zeros = bytes(min(size, 1 << 20))
        for start in range(0, size, len(zeros)):
            os.pwrite(descriptor, zeros[: size - start], start)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return open_segment(path, synchronous)


def open_segment(path: Path, synchronous: bool) -> int:
    """A segment's descriptor to write with (``O_DSYNC`` when ``synchronous``)."""
    return os.open(path, os.O_RDWR | (os.O_DSYNC if synchronous else 0))


def zeros_after(path: Path, end: int) -> bool:
    """Whether a segment holds nothing but zeros after its records."""
    with open(path, "rb") as file:
        file.seek(end)
        while chunk := file.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
    return True


def zero(path: Path, start: int, stop: int) -> None:
    """Overwrite bytes ``start`` to ``stop`` of a segment with zeros, durably."""
    with open(path, "r+b") as file:
        file.seek(start)
        file.write(bytes(max(0, stop - start)))
        file.flush()
        os.fsync(file.fileno())


def fsync_directory(directory: Path) -> None:
    """Make a created, renamed or deleted directory entry durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
