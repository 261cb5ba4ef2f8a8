"""Budget definitions, as the stream reads them.

The parsing and matching live in ``tollgate.budget_definitions``: the gateways enforce
the same definitions from their first call, so both services read them one way.
"""

from __future__ import annotations

from tollgate.budget_definitions import DIMENSION_NAMES, BudgetIndex, SubjectMatch, load_budgets

__all__ = ["DIMENSION_NAMES", "BudgetIndex", "SubjectMatch", "load_budgets"]
