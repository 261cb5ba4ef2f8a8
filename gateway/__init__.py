"""The gateway: an OpenAI- and Anthropic-compatible proxy that meters every AI call.

It authenticates, rate-limits, refuses spent budgets, routes to providers, and emits one
usage event per call to ``tollgate.usage.v1``. It shares only ``tollgate`` with the rest.
"""
