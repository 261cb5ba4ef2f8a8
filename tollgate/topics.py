"""Every Tollgate topic, its partitions and its configs, in one place.

Topic names carry their contract version (``.v1``). A deployment-wide prefix (from
settings) lets several environments, or test runs, share one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tollgate.contract import (
    Alert,
    BudgetDefinition,
    BudgetState,
    EvaluationEvent,
    GatewayClaims,
    PricedEvent,
    Record,
    UsageEvent,
)

COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its base name, what it carries, how it is laid out."""

    base_name: str
    record_type: type[Record] | None
    """The record each message holds; None for raw payloads (the dead-letter topic)."""
    compacted: bool = False
    partitioned: bool = True
    """False for small topics every instance reads whole (definitions)."""
    configs: dict[str, str] = field(default_factory=dict)


USAGE = TopicSpec("tollgate.usage.v1", UsageEvent)
PRICED = TopicSpec("tollgate.priced.v1", PricedEvent)
USAGE_DLQ = TopicSpec("tollgate.usage.dlq.v1", None)
BUDGET_DEFINITIONS = TopicSpec(
    "tollgate.budget-definitions.v1", BudgetDefinition, compacted=True, partitioned=False
)
BUDGET_STATE = TopicSpec("tollgate.budget-state.v1", BudgetState, compacted=True)
GATEWAY_CLAIMS = TopicSpec(
    "tollgate.gateway-claims.v1",
    GatewayClaims,
    partitioned=False,
)
"""Each gateway instance's claims on the budgets, a few times a second; every instance
reads them all from the end (``gateway.budget_shares``)."""
ALERTS = TopicSpec("tollgate.alerts.v1", Alert)
EVALUATIONS = TopicSpec("tollgate.evaluations.v1", EvaluationEvent)
"""Quality signals about calls, keyed by tenant as usage is (so a tenant's calls and their
evaluations share a partition number)."""
BUDGET_CONTRIBUTIONS = TopicSpec("tollgate.budget-contributions.v1", None)
"""Internal to the stream: each priced call's share of each budget it falls under, keyed by
the budget state's key, so that one worker owns each budget subject (a repartition)."""

METER_SEEN_IDS = TopicSpec("tollgate.meter-seen-ids.v1", None, compacted=True)
"""Internal to the stream: the changelog of the usage ids the meter has seen, partitioned
as the usage topic is (``stream.changelog``)."""
BUDGET_SUBJECTS = TopicSpec("tollgate.budget-subjects.v1", None, compacted=True)
"""Internal to the stream: the changelog of every budget subject's state, partitioned as
the contributions topic is."""

ALL_TOPICS: tuple[TopicSpec, ...] = (
    USAGE,
    PRICED,
    USAGE_DLQ,
    BUDGET_DEFINITIONS,
    BUDGET_STATE,
    GATEWAY_CLAIMS,
    ALERTS,
    EVALUATIONS,
    BUDGET_CONTRIBUTIONS,
    METER_SEEN_IDS,
    BUDGET_SUBJECTS,
)


@dataclass(frozen=True)
class Topics:
    """The concrete topic names and layouts of one deployment."""

    prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1

    def name(self, spec: TopicSpec) -> str:
        return f"{self.prefix}{spec.base_name}"

    def partitions_of(self, spec: TopicSpec) -> int:
        return self.partitions if spec.partitioned else 1

    def configs_of(self, spec: TopicSpec) -> dict[str, str]:
        return {**(COMPACTED if spec.compacted else {}), **spec.configs}

    @property
    def usage(self) -> str:
        return self.name(USAGE)

    @property
    def priced(self) -> str:
        return self.name(PRICED)

    @property
    def usage_dlq(self) -> str:
        return self.name(USAGE_DLQ)

    @property
    def budget_definitions(self) -> str:
        return self.name(BUDGET_DEFINITIONS)

    @property
    def budget_state(self) -> str:
        return self.name(BUDGET_STATE)

    @property
    def gateway_claims(self) -> str:
        return self.name(GATEWAY_CLAIMS)

    @property
    def alerts(self) -> str:
        return self.name(ALERTS)

    @property
    def evaluations(self) -> str:
        return self.name(EVALUATIONS)

    @property
    def budget_contributions(self) -> str:
        return self.name(BUDGET_CONTRIBUTIONS)

    @property
    def meter_seen_ids(self) -> str:
        return self.name(METER_SEEN_IDS)

    @property
    def budget_subjects(self) -> str:
        return self.name(BUDGET_SUBJECTS)
