"""Log lines cannot be forged by the text they quote (issue 15, finding 8)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tollgate.logs import JsonFormatter, TextFormatter

FORGED = "gpt-4o\nERROR tollgate.gateway forged line\r\x1b[31m\u2028also forged\x85"


@pytest.fixture
def written() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def test_text_logs_escape_control_characters_in_the_message(
    written: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = written
    logger.handlers[0].setFormatter(TextFormatter())
    logger.warning("model %s refused", FORGED)
    assert buffer.getvalue() == (
        "WARNING tests.logs model gpt-4o\\nERROR tollgate.gateway forged line\\r\\x1b[31m"
        "\\u2028also forged\\x85 refused\n"
    )


def test_a_traceback_in_text_logs_cannot_pass_for_a_record(
    written: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = written
    logger.handlers[0].setFormatter(TextFormatter())
    try:
        raise ValueError(FORGED)
    except ValueError:
        logger.exception("call failed")
    first, *rest = buffer.getvalue().splitlines()
    assert first == "ERROR tests.logs call failed"
    assert rest
    assert all(line.startswith("  | ") for line in rest)


def test_json_logs_are_one_line_per_record_with_the_text_intact(
    written: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = written
    logger.handlers[0].setFormatter(JsonFormatter())
    logger.warning("model %s refused", FORGED, extra={"fields": {"model": FORGED}})
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["model"] == FORGED
    assert "\x1b" not in lines[0]
