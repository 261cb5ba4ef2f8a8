"""The budgets as a stage of the stream: contributions in; budget states, threshold
alerts and the subjects' changelog out.

``stream.budget_batches`` decides what contributions do to each subject's state; this
class reads, sends, and keeps the states of the contributions partitions this worker owns
(``stream.stage_consumer`` drives it), and lets time pass over them: sliding windows
decay, periods roll over, idle subjects are deleted.

A batch's states and alerts are delivered before its subjects' changelog is written. The
other way round, a worker killed between the two would come back with states that had
counted the batch, drop the batch as counted when reading it again, and never publish
what it changed: the gateways would enforce a stale state and the alerts would be lost.
This way, what it reads again is counted again from the older state and published anew
(an alert a second time, with the same id).
"""

from __future__ import annotations

from datetime import UTC, datetime

from stream.budget_batches import BudgetBatches, ContributionRecord, TableKey
from stream.changelog import ChangelogTable
from stream.metrics import StreamMetrics
from stream.record_sender import RecordSender, delivered
from stream.stage_consumer import Records
from tollgate.contract import AlertKind
from tollgate.topics import Topics


class BudgetStage:
    def __init__(
        self,
        batches: BudgetBatches,
        subjects: ChangelogTable,
        sender: RecordSender,
        metrics: StreamMetrics,
        topics: Topics,
    ) -> None:
        self.batches = batches
        self.subjects = subjects
        self.sender = sender
        self.metrics = metrics
        self.topics = topics

    async def take_over(self, partitions: set[int]) -> None:
        await self.subjects.restore(partitions)

    def let_go(self, partitions: set[int]) -> None:
        self.subjects.drop(partitions)

    async def process(self, records: Records) -> None:
        out = self.batches.process(
            [ContributionRecord(r.partition, r.offset, r.value) for r in records],
            self._load,
            datetime.now(UTC),
        )
        for (partition, key), value in out.writes.items():
            self.subjects.set(partition, key, value)
        futures = await self.sender.send(self.topics.budget_state, out.states)
        futures += await self.sender.send(self.topics.alerts, out.alerts)
        await delivered(futures)
        await delivered(await self.subjects.write(self.sender))  # after: see the docstring
        self.metrics.budget_batch(out)
        self.metrics.alerts_raised.labels(AlertKind.BUDGET_THRESHOLD.value).inc(len(out.alerts))

    async def tick(self, partitions: set[int]) -> None:
        items = [
            ((partition, key), value)
            for partition in partitions
            for key, value in self.subjects.partition(partition).items()
        ]
        writes, states = self.batches.expire(items, datetime.now(UTC))
        for (partition, key), value in writes.items():
            if value is None:
                self.subjects.delete(partition, key)
            else:
                self.subjects.set(partition, key, value)
        await delivered(await self.sender.send(self.topics.budget_state, states))
        await delivered(await self.subjects.write(self.sender))

    def _load(self, key: TableKey) -> bytes | None:
        return self.subjects.get(*key)
