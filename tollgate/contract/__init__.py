"""The event contract: the records every Tollgate service reads and writes.

Events are the source of truth. Services depend on these records and on the topics
that carry them, never on each other.
"""

from tollgate.contract.alerts import Alert, AlertKind, Severity
from tollgate.contract.budgets import (
    EACH,
    BudgetAction,
    BudgetDefinition,
    BudgetState,
    BudgetStatus,
    BudgetWindow,
    CalendarUnit,
    Dimension,
    WindowKind,
    state_key,
    subject_key,
)
from tollgate.contract.claims import GatewayClaims, SubjectClaim
from tollgate.contract.codec import decode, encode
from tollgate.contract.evaluations import EvaluationEvent
from tollgate.contract.priced import PricedEvent, PricedEventV1
from tollgate.contract.record import Record
from tollgate.contract.usage import (
    REJECTED_STATUSES,
    Operation,
    Status,
    UsageEvent,
    UsageEventV1,
    UsageSource,
)

__all__ = [
    "EACH",
    "REJECTED_STATUSES",
    "Alert",
    "AlertKind",
    "BudgetAction",
    "BudgetDefinition",
    "BudgetState",
    "BudgetStatus",
    "BudgetWindow",
    "CalendarUnit",
    "Dimension",
    "EvaluationEvent",
    "GatewayClaims",
    "Operation",
    "PricedEvent",
    "PricedEventV1",
    "Record",
    "Severity",
    "Status",
    "SubjectClaim",
    "UsageEvent",
    "UsageEventV1",
    "UsageSource",
    "WindowKind",
    "decode",
    "encode",
    "state_key",
    "subject_key",
]
