"""The stream: workers that price usage, keep budgets and raise alerts.

They read ``tollgate.usage.v1`` and write priced events, budget state and alerts. They
share only ``tollgate`` with the rest.
"""
