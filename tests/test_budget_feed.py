"""The budget feed against a real broker: states in, the book follows, bad records skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from gateway.budget_book import NO_BUDGET, BudgetBook
from gateway.budget_feed import BudgetFeed
from gateway.errors import BudgetExceeded
from tests.factories import make_state
from tollgate.broker import EmbeddedBroker, ensure_topics, free_port
from tollgate.contract import BudgetAction, BudgetState, BudgetStatus, Dimension, encode
from tollgate.kafka import producer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(30)

FAST = {
    "request_timeout_s": 2.0,
    "poll_timeout_s": 0.05,
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.3,
}

ACME = {Dimension.TENANT: "acme"}


def live_state(**overrides: Any) -> BudgetState:
    """A state of the current window: acme's 1,000 tokens, 900 spent, as of now."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "budget_id": "acme-tokens",
        "spent_tokens": 900,
        "limit_tokens": 1000,
        "limit_usd": None,
        "window_start": now - timedelta(hours=1),
        "window_end": now + timedelta(hours=1),
        "as_of_time": now,
    }
    fields.update(overrides)
    return make_state(**fields)


def spent(**overrides: Any) -> BudgetState:
    return live_state(status=BudgetStatus.EXCEEDED, spent_tokens=1000, **overrides)


def call_of(tenant: str) -> dict[Dimension, str | None]:
    return {Dimension.TENANT: tenant, Dimension.TEAM: "search"}


def admits(book: BudgetBook, tenant: str = "acme") -> bool:
    try:
        reservation, _ = book.admit(call_of(tenant), 1, Decimal(0), datetime.now(UTC))
    except BudgetExceeded:
        return False
    reservation.cancel()
    return True


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- worlds --------------------------------------------------------------------------------


Publish = Callable[..., Any]


@pytest.fixture
async def publish(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> AsyncIterator[Publish]:
    """Write (key, value) records to this test's state topic; a state is keyed by its key."""
    producer = AIOKafkaProducer(**producer_options(kafka_settings, broker))
    await producer.start()

    async def send(*records: BudgetState | tuple[str, bytes | None]) -> None:
        for record in records:
            if isinstance(record, BudgetState):
                key, value = record.key(), encode(record)
            else:
                key, value = record
            await producer.send_and_wait(topics.budget_state, value, key=key.encode())

    yield send
    await producer.stop()


@pytest.fixture
async def make_feed(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> AsyncIterator[Callable[..., BudgetFeed]]:
    """Build feeds on this test's state topic; every one is stopped at the end."""
    made: list[BudgetFeed] = []

    def make(book: BudgetBook, bootstrap_servers: str = broker) -> BudgetFeed:
        feed = BudgetFeed(kafka_settings, bootstrap_servers, topics.budget_state, book, **FAST)
        made.append(feed)
        return feed

    yield make
    for feed in made:
        await feed.stop()


# -- behaviour -----------------------------------------------------------------------------


async def test_feed_catches_up_and_the_book_refuses_a_spent_budget(
    publish: Publish, make_feed: Callable[..., BudgetFeed]
) -> None:
    others = [live_state(scope={Dimension.TENANT: f"t{i}"}) for i in range(20)]
    await publish(*others, spent())
    book = BudgetBook(fail_open=True)
    feed = make_feed(book)

    await feed.start()
    await eventually(lambda: feed.caught_up)

    assert book.caught_up
    assert len(book) == 21
    assert feed.stats.records_applied == 21
    assert not admits(book)
    assert admits(book, "globex")


async def test_caught_up_means_every_state_of_a_batch_the_stream_sent_whole(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, make_feed: Callable[..., BudgetFeed]
) -> None:
    # The stream sends a partition's states as one record batch, and the embedded broker
    # gives a log's end (ListOffsets) as the start of its last batch plus one: caught up
    # must still mean every state of that batch was read, not the first one.
    states = [live_state(scope={Dimension.TENANT: f"t{i}"}) for i in range(9)] + [spent()]
    producer = AIOKafkaProducer(**producer_options(kafka_settings, broker))
    await producer.start()
    try:
        batch = producer.create_batch()
        for state in states:
            assert batch.append(key=state.key().encode(), value=encode(state), timestamp=None)
        await (await producer.send_batch(batch, topics.budget_state, partition=0))
    finally:
        await producer.stop()
    book = BudgetBook(fail_open=True)
    feed = make_feed(book)

    await feed.start()
    await eventually(lambda: feed.caught_up)

    assert len(book) == 10
    assert not admits(book)


async def test_feed_follows_updates_and_tombstones(
    publish: Publish, make_feed: Callable[..., BudgetFeed]
) -> None:
    alert_budget = live_state(
        budget_id="acme-alert", action=BudgetAction.ALERT, status=BudgetStatus.EXCEEDED
    )
    await publish(spent(), alert_budget)
    book = BudgetBook(fail_open=True)
    feed = make_feed(book)
    await feed.start()
    await eventually(lambda: feed.caught_up)
    assert not admits(book)

    await publish(live_state(status=BudgetStatus.OK, spent_tokens=10))
    await eventually(lambda: admits(book))

    await publish(spent())
    await eventually(lambda: not admits(book))

    await publish((spent().key(), None), (alert_budget.key(), None))
    await eventually(lambda: len(book) == 0)
    assert admits(book)
    assert feed.stats.tombstones_applied == 2


async def test_invalid_records_are_counted_and_skipped(
    publish: Publish, make_feed: Callable[..., BudgetFeed], caplog: pytest.LogCaptureFixture
) -> None:
    state = spent()
    await publish(
        ("acme-tokens|tenant=acme", b"not json"),
        ("acme-tokens|tenant=acme", b'{"schema_version": 99}'),
        ("someone-else|tenant=acme", encode(state)),
        state,
    )
    book = BudgetBook(fail_open=True)
    feed = make_feed(book)

    await feed.start()
    await eventually(lambda: feed.caught_up)

    assert feed.stats.records_invalid == 3
    assert feed.stats.records_applied == 1
    assert not admits(book)
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.budget_feed"]
    assert any("'acme-tokens|tenant=acme'" in w and "malformed JSON" in w for w in warnings)
    assert any("schema_version 99 is not supported" in w for w in warnings)


async def test_feed_on_an_empty_topic_catches_up_and_then_follows(
    publish: Publish, make_feed: Callable[..., BudgetFeed]
) -> None:
    book = BudgetBook(fail_open=False)
    feed = make_feed(book)

    await feed.start()
    await eventually(lambda: feed.caught_up)
    assert admits(book)
    assert book.admit(call_of("acme"), 1, Decimal(0), datetime.now(UTC))[1] == NO_BUDGET

    await publish(spent())
    await eventually(lambda: not admits(book))


async def test_feed_started_while_the_broker_is_down_connects_when_it_comes_up(
    kafka_settings: KafkaSettings, make_feed: Callable[..., BudgetFeed], tmp_path: Path
) -> None:
    port = free_port()
    book = BudgetBook(fail_open=False)
    feed = make_feed(book, f"127.0.0.1:{port}")

    started = time.monotonic()
    await feed.start()
    assert time.monotonic() - started < 0.5
    await asyncio.sleep(0.3)
    assert not feed.caught_up
    assert not admits(book)

    own = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(own.start)
    try:
        await asyncio.sleep(0.3)  # the feed now finds a broker without the topic
        await ensure_topics(kafka_settings, own.bootstrap_servers, kafka_settings.topics())
        await eventually(lambda: feed.caught_up)
        assert admits(book)
    finally:
        await feed.stop()
        await asyncio.to_thread(own.stop)
