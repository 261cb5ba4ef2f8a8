"""Request ids that say whose call they name: a tenant-bound MAC inside the UUIDv7.

``POST /v1/evaluations`` must refuse a request id of another tenant's call. The gateway
instance that receives an evaluation is often not the one that served the call, and may
have restarted since; a lookup would need a shared store on the gateway's path. Instead
the id itself carries the proof: the random bits of the call's UUIDv7 end in a MAC of
the id's other bits and the caller's tenant, keyed by a secret every instance shares
(``gateway.request_id_key``, or one key file on a single machine). Any instance checks
it with no state, across restarts, and the id stays an ordinary UUIDv7 (and the usage
event's ``event_id``).

Layout of the 74 random bits of RFC 9562's UUIDv7: 50 random, then a 24-bit
HMAC-SHA256 prefix over (48-bit time, the 50 random bits, the tenant). A tenant holding
another tenant's request id has nothing to vary: the id is fixed and so is its own
tenant, so it passes with probability 2^-24 per id it holds, once, and never by retrying.
Calls refused before the caller was known keep a plain UUIDv7 (it passes no tenant).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from pathlib import Path

_MAC_BITS = 24
_RANDOM_BITS = 50
_KEY_BYTES = 32


class RequestIds:
    """Issues and checks tenant-bound request ids with one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a request-id key needs at least 16 bytes")
        self._key = key

    def issue(self, tenant: str, unix_ms: int | None = None) -> uuid.UUID:
        """A new UUIDv7 for a call of ``tenant``."""
        ms = (time.time_ns() // 1_000_000 if unix_ms is None else unix_ms) & ((1 << 48) - 1)
        random_bits = int.from_bytes(os.urandom(7), "big") >> (56 - _RANDOM_BITS)
        rand = random_bits << _MAC_BITS | self._mac(ms, random_bits, tenant)
        rand_a, rand_b = rand >> 62, rand & ((1 << 62) - 1)
        return uuid.UUID(int=ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)

    def belongs_to(self, request_id: uuid.UUID, tenant: str) -> bool:
        """Was ``request_id`` issued by a gateway with this key, for a call of ``tenant``?"""
        if request_id.version != 7:
            return False
        value = request_id.int
        ms = value >> 80
        rand = ((value >> 64) & 0xFFF) << 62 | value & ((1 << 62) - 1)
        random_bits, mac = rand >> _MAC_BITS, rand & ((1 << _MAC_BITS) - 1)
        return hmac.compare_digest(
            self._mac(ms, random_bits, tenant).to_bytes(3, "big"), mac.to_bytes(3, "big")
        )

    def _mac(self, ms: int, random_bits: int, tenant: str) -> int:
        message = ms.to_bytes(6, "big") + random_bits.to_bytes(7, "big") + tenant.encode()
        digest = hmac.digest(self._key, message, "sha256")  # OpenSSL's one-shot: no object
        return int.from_bytes(digest[:3], "big")


def load_key(configured: str | None, key_file: Path) -> bytes:
    """The configured key, else the key file's (created once, mode 0600, on first start).

    Several gateway instances must share one key: configure it on each, or let them
    share the file.
    """
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    try:
        return bytes.fromhex(key_file.read_text().strip())
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_bytes(_KEY_BYTES)
    tmp = key_file.with_name(key_file.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(fresh.hex())
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(tmp, key_file)  # the first instance to get here wins; the others read its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(key_file.read_text().strip())
