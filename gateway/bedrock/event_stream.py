"""Reading AWS event-stream messages as they arrive, with botocore's parser.

Each message's prelude and whole-message CRC32 are checked by the parser; a mismatch, a
malformed frame, or a stream that ends inside a message is ``UpstreamBrokeOff``: the
answer cannot be trusted past that point, and the gateway ends the client's stream with
an error instead of passing on a corrupt or partial answer as complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.eventstream import EventStreamBuffer, ParserError

from gateway.upstream_client import UpstreamBrokeOff


@dataclass(frozen=True, slots=True)
class StreamMessage:
    message_type: str
    """``event``, or ``exception`` / ``error`` for a failure inside the stream."""
    name: str
    """The event type (``chunk``, ``contentBlockDelta``...) or the exception type."""
    payload: bytes

    @property
    def is_failure(self) -> bool:
        return self.message_type != "event"


class EventStreamReader:
    """Cuts a byte stream into whole, checked messages."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._pending = 0

    def feed(self, chunk: bytes) -> list[StreamMessage]:
        self._buffer.add_data(chunk)
        self._pending += len(chunk)
        messages = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                headers = message.headers
                message_type = str(headers.get(":message-type", "event"))
                name = headers.get(":event-type") or headers.get(":exception-type")
                name = name or headers.get(":error-code") or ""
                messages.append(StreamMessage(message_type, str(name), message.payload))
        except ParserError as error:
            raise UpstreamBrokeOff(f"malformed event-stream message: {error}") from None
        return messages

    def finish(self) -> None:
        """The stream ended: it must not have ended inside a message."""
        if self._pending:
            raise UpstreamBrokeOff("the event stream ended inside a message")
