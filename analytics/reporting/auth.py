"""Reporting keys: who may read the lake, and which tenant's rows they see.

An admin key sees every tenant. A tenant key sees only its own tenant's rows, whatever
filters it sends: the API passes the key's tenant as ``tenant_scope`` into every query.
Keys are stored as the hex SHA-256 of the secret, never in clear (as the gateway stores
its API keys); ``printf %s "$KEY" | sha256sum`` computes one. The keys file::

    keys:
      - id: acme-finance          # shown in logs and /v1/whoami; never a secret
        key_sha256: 9f86d0…
        tenant: acme
      - id: finops
        key_sha256: 60303a…
        admin: true               # sees every tenant

``reporting.admin_key`` in the settings is one more admin key, given in clear (from the
environment, say). A caller sends ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tollgate.errors import SettingsError, TollgateError
from tollgate.settings import ReportingSettings

MISSING_KEY = "missing reporting key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
INVALID_KEY = "invalid reporting key"
ADMIN_KEY_ID = "admin"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class Unauthorized(TollgateError):
    """The request carries no reporting key, or one that is not known (HTTP 401)."""


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``: what the keys file stores instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Whoever a reporting key belongs to; ``tenant`` is None for an admin."""

    key_id: str
    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None


class ReportingKey(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$", max_length=128)]
    key_sha256: str
    tenant: Annotated[str, Field(min_length=1)] | None = None
    admin: bool = False

    @field_validator("key_sha256")
    @classmethod
    def _is_a_sha256(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be 64 lowercase hex digits: the SHA-256 of the key")
        return value

    @model_validator(mode="after")
    def _tenant_or_admin(self) -> Self:
        if (self.tenant is None) == (not self.admin):
            raise ValueError("give exactly one of `tenant` and `admin: true`")
        return self

    def caller(self) -> Caller:
        return Caller(key_id=self.id, tenant=None if self.admin else self.tenant)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ReportingKey] = []


class KeyRing:
    """Turns request headers into a ``Caller``. With no key at all, every request is refused."""

    def __init__(self, keys: Iterable[ReportingKey] = (), *, admin_key: str | None = None) -> None:
        self._by_hash: dict[str, Caller] = {}
        for key in keys:
            if key.key_sha256 in self._by_hash:
                raise SettingsError(f"reporting keys: key {key.id!r} repeats another key's hash")
            self._by_hash[key.key_sha256] = key.caller()
        self._admin_sha256 = hash_key(admin_key) if admin_key else None

    def __len__(self) -> int:
        return len(self._by_hash) + (self._admin_sha256 is not None)

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        digest = hash_key(_credential(headers))
        if self._admin_sha256 is not None and hmac.compare_digest(digest, self._admin_sha256):
            return Caller(key_id=ADMIN_KEY_ID, tenant=None)
        caller = self._by_hash.get(digest)
        if caller is None:
            raise Unauthorized(INVALID_KEY)
        return caller

    @classmethod
    def from_settings(cls, settings: ReportingSettings) -> KeyRing:
        keys = load_keys_file(settings.keys_file) if settings.keys_file else []
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        return cls(keys, admin_key=admin)


def load_keys_file(path: Path) -> list[ReportingKey]:
    """The keys in ``path``, or a ``SettingsError`` naming the file and the bad entry."""
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SettingsError(f"cannot read reporting keys file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"reporting keys file {path} is not valid YAML: {error}") from None
    try:
        return _KeysFile.model_validate(content).keys
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        raise SettingsError(f"reporting keys file {path}: {problems}") from None


def _credential(headers: Mapping[str, str]) -> str:
    """The caller's secret: the Bearer token, else ``x-api-key``."""
    authorization = (headers.get("authorization") or "").strip()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = (headers.get("x-api-key") or "").strip()
    if api_key:
        return api_key
    if authorization and scheme.lower() != "bearer":
        raise Unauthorized("unsupported Authorization scheme: send `Bearer <key>`")
    raise Unauthorized(MISSING_KEY)
