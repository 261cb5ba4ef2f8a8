"""A per-call token budget: the caller caps what one call may use, input and output.

As the AI-gateway pattern's ``X-Token-Budget`` header: a key's ``token_budget`` section
names the header (default ``X-Token-Budget``), the budget a call gets when it sends none
(default 10,000) and the key's ceiling, which no call may ask to exceed.

The call's input is estimated by the metering heuristic (one token per four characters
of prompt text). A call whose input alone is over its budget is refused before it
reaches a model (400, ``token_budget_exceeded``, in the API's own error format); any
other call has its output capped to what the budget leaves after the input, by lowering
(never raising) the request's own output limit. The event records the budget the call
ran under.

```yaml
api_keys:
  - id: acme-app
    ...
    token_budget: {header: X-Token-Budget, default: 10000, ceiling: 50000}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest, TokenBudgetExceeded
from gateway.principal import TokenBudgetPolicy
from gateway.routes import BackendKind
from gateway.usage_reading import estimate_tokens, request_chars
from tollgate.contract import Operation


@dataclass(frozen=True, slots=True)
class BudgetedCall:
    payload: dict[str, Any]
    changed: bool
    """The payload's output limit was lowered: the body must be encoded again."""
    budget: int


def budget_for(policy: TokenBudgetPolicy, headers: Mapping[str, str]) -> int:
    """The budget a call asks for by its header, or the key's default; checked."""
    raw = headers.get(policy.header)
    if raw is None:
        budget = policy.default
    else:
        text = raw.strip()
        if not text.isdigit() or int(text) <= 0:
            raise InvalidRequest(
                f"{policy.header} must be a positive whole number of tokens, got {raw[:32]!r}"
            )
        budget = int(text)
    if policy.ceiling is not None and budget > policy.ceiling:
        raise InvalidRequest(
            f"{policy.header} {budget} is over this key's ceiling of {policy.ceiling} tokens"
        )
    return budget


def apply_budget(
    budget: int,
    policy: TokenBudgetPolicy,
    payload: dict[str, Any],
    operation: Operation,
    backend_kind: BackendKind,
) -> BudgetedCall:
    """The request with its output capped to ``budget``, or ``TokenBudgetExceeded``."""
    input_tokens = estimate_tokens(request_chars(payload))
    left = budget - input_tokens
    no_output = operation is Operation.EMBEDDINGS
    if left < 0 or (left == 0 and not no_output):
        raise TokenBudgetExceeded(
            f"the input (about {input_tokens} tokens) leaves nothing of this call's token "
            f"budget of {budget}; send a larger {policy.header} or a shorter input"
        )
    if no_output:
        return BudgetedCall(payload, False, budget)
    field = _output_field(payload, operation, backend_kind)
    current = payload.get(field)
    if isinstance(current, int) and not isinstance(current, bool) and 0 < current <= left:
        return BudgetedCall(payload, False, budget)
    return BudgetedCall({**payload, field: left}, True, budget)


def _output_field(payload: dict[str, Any], operation: Operation, kind: BackendKind) -> str:
    """Where the request says its output limit: the field it uses, else the API's own."""
    if operation is Operation.RESPONSES:
        return "max_output_tokens"
    if operation in (Operation.MESSAGES, Operation.COMPLETIONS):
        return "max_tokens"
    for field in ("max_completion_tokens", "max_tokens"):
        if field in payload:
            return field
    # OpenAI's reasoning models refuse max_tokens; servers speaking OpenAI's API may not
    # know max_completion_tokens yet.
    if kind in (BackendKind.OPENAI, BackendKind.AZURE):
        return "max_completion_tokens"
    return "max_tokens"
