"""The event-stream framing: the fake's writer against botocore's reader, and what the
gateway does with a frame whose CRC does not check out or a stream cut mid-message."""

from __future__ import annotations

import pytest
from botocore.eventstream import EventStreamBuffer

from gateway.bedrock.event_stream import EventStreamReader
from gateway.upstream_client import UpstreamBrokeOff
from tollgate.fake_provider import event_stream


def test_botocore_reads_what_the_fake_writes() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(event_stream.event("chunk", b'{"bytes":"e30="}'))
    buffer.add_data(event_stream.exception("throttlingException", b'{"message":"slow down"}'))
    first, second = list(buffer)
    assert first.headers[":event-type"] == "chunk"
    assert first.payload == b'{"bytes":"e30="}'
    assert second.headers[":message-type"] == "exception"
    assert second.headers[":exception-type"] == "throttlingException"


def test_messages_split_across_reads_come_out_whole() -> None:
    wire = event_stream.event("messageStart", b'{"role":"assistant"}') + event_stream.event(
        "metadata", b'{"usage":{"inputTokens":3}}'
    )
    reader = EventStreamReader()
    messages = [m for i in range(len(wire)) for m in reader.feed(wire[i : i + 1])]
    reader.finish()
    assert [(m.name, m.is_failure) for m in messages] == [
        ("messageStart", False),
        ("metadata", False),
    ]


def test_a_corrupt_message_crc_breaks_the_stream_off() -> None:
    frame = bytearray(event_stream.event("chunk", b'{"bytes":"e30="}'))
    frame[20] ^= 0x01  # a payload or header byte: the message CRC no longer matches
    with pytest.raises(UpstreamBrokeOff, match="malformed"):
        EventStreamReader().feed(bytes(frame))


def test_a_corrupt_prelude_crc_breaks_the_stream_off() -> None:
    frame = bytearray(event_stream.event("chunk", b"{}"))
    frame[9] ^= 0xFF
    with pytest.raises(UpstreamBrokeOff):
        EventStreamReader().feed(bytes(frame))


def test_a_stream_that_ends_inside_a_message_is_broken_off() -> None:
    frame = event_stream.event("chunk", b'{"bytes":"e30="}')
    reader = EventStreamReader()
    assert reader.feed(frame[:-5]) == []
    with pytest.raises(UpstreamBrokeOff, match="inside a message"):
        reader.finish()
