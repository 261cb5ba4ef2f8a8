"""Structured logs: one JSON object per line, for machines, with the fields apart.

A record's ``extra={"fields": {...}}`` become top-level keys. Nothing secret goes in:
callers log ids, names and counts, never keys, tokens or prompt text.

Log lines quote text that callers choose (a model name, a tenant claim), so neither format
lets that text start a line of its own: JSON escapes every control character, and the
text format writes them as ``\n``, ``\x1b``, ``\u2028``… and indents a traceback's
lines under a ``|`` so nothing in it can pass for a record of its own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_controls(text: str) -> str:
    """``text`` on one line: every control character (C0, DEL, C1, and the Unicode line
    and paragraph separators) written as an escape."""
    return text.translate(_CONTROL)


class TextFormatter(logging.Formatter):
    """``LEVEL logger message``, one record per line whatever the message holds."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{record.levelname} {record.name} {escape_controls(record.message)}"

    def formatException(self, ei: Any) -> str:
        lines = super().formatException(ei).split("\n")
        return "\n".join("  | " + escape_controls(line) for line in lines)

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("  | " + escape_controls(line) for line in stack_info.split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Send every log record to stderr, as JSON lines or as plain text for a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka narrates every reconnect at INFO; its warnings are what operators need.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
