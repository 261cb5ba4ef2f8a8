"""The Tollgate error family.

Every failure Tollgate raises on purpose is a ``TollgateError``; each service maps the
family to its own edge (the gateway to provider-style JSON, the CLI to an exit code) in
one place.
"""

from __future__ import annotations


class TollgateError(Exception):
    """Base class of every error Tollgate raises on purpose."""


class ContractError(TollgateError, ValueError):
    """A record does not satisfy the event contract (wrong type, range, or version)."""

    def __init__(self, message: str, *, record_type: str, field: str | None = None) -> None:
        self.record_type = record_type
        self.field = field
        where = f" at field `{field}`" if field else ""
        super().__init__(f"invalid {record_type}{where}: {message}")


class UnsupportedSchemaVersion(ContractError):
    """A record carries a ``schema_version`` this build cannot read."""


class SettingsError(TollgateError):
    """A setting is missing, malformed, or contradicts another one."""


class BrokerError(TollgateError):
    """The Kafka broker could not be started, reached, or prepared."""
