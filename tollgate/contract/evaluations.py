"""The evaluation event: a quality signal about one AI call, beside what it cost.

Shaped after the OpenTelemetry GenAI ``gen_ai.evaluation.result`` event:
``name`` is ``gen_ai.evaluation.name``, ``score_value`` and ``score_label`` are
``gen_ai.evaluation.score.value`` and ``.label``, ``explanation`` is
``gen_ai.evaluation.explanation``; ``event_id`` (the call's ``x-tollgate-request-id``) plays
the part of ``gen_ai.response.id``, tying the result to the call it judges. A call may
have any number of evaluations; each is its own immutable record, so a later one never
erases an earlier one.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated

import msgspec

from tollgate.contract.record import Name, Record, UtcDatetime, invalid

Explanation = Annotated[str, msgspec.Meta(max_length=4000)]


class EvaluationEvent(Record, tag=1, kw_only=True):
    """One evaluation of one call. Keyed on the topic by tenant, as usage is.

    ``evaluation_id`` is a UUIDv7 and the idempotency key (the gateway may deliver a
    record twice); ``event_id`` is the usage event of the call evaluated.
    """

    evaluation_id: uuid.UUID
    event_id: uuid.UUID
    time: UtcDatetime
    """When the evaluation was received."""
    tenant: Name
    """The tenant of the call, which is the tenant of whoever evaluated it."""
    api_key_id: Name | None = None
    """The key that posted the evaluation (an id, never a secret)."""
    name: Name
    """What was judged: hallucination, groundedness, user_feedback, any name."""
    score_value: float | None = None
    score_label: Name | None = None
    explanation: Explanation | None = None
    evaluator: Name | None = None
    """Who or what judged: a model, a rule set, ``human``..."""

    def __post_init__(self) -> None:
        for field in ("evaluation_id", "event_id"):
            version = getattr(self, field).version
            if version != 7:
                invalid(self, field, f"must be a UUIDv7, got version {version}")
        if self.score_value is None and self.score_label is None:
            invalid(self, "score_value", "an evaluation needs a score_value, a score_label or both")
        if self.score_value is not None and not math.isfinite(self.score_value):
            invalid(self, "score_value", f"must be a finite number, got {self.score_value}")
