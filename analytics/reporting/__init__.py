"""The reporting API and dashboard: the lake's questions over HTTP, per reporting key."""

from analytics.reporting.app import create_app
from analytics.reporting.auth import Caller, KeyRing, ReportingKey, hash_key, load_keys_file
from analytics.reporting.server import BackgroundServer, app_from_settings

__all__ = [
    "BackgroundServer",
    "Caller",
    "KeyRing",
    "ReportingKey",
    "app_from_settings",
    "create_app",
    "hash_key",
    "load_keys_file",
]
