"""Routing: priorities, weights, patterns, and circuit breakers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routes import BackendConfig, BackendKind, RoutesConfig
from gateway.routing import CircuitBreaker, Router


def backend(
    name: str, priority: int = 0, weight: float = 1.0, kind: str = "openai"
) -> BackendConfig:
    return BackendConfig(
        name=name,
        kind=BackendKind(kind),
        base_url="http://127.0.0.1:1",
        priority=priority,
        weight=weight,
    )


def test_lower_priority_backends_are_tried_first() -> None:
    router = Router()
    order = router.candidates([backend("spare", priority=1), backend("main", priority=0)])
    assert [b.name for b in order] == ["main", "spare"]


def test_equal_priorities_share_traffic_by_weight() -> None:
    router = Router(rng=random.Random(7))
    heavy, light = backend("heavy", weight=3), backend("light", weight=1)
    firsts = Counter(router.candidates([heavy, light])[0].name for _ in range(4000))
    assert 0.70 < firsts["heavy"] / 4000 < 0.80


def test_a_backend_failing_three_times_in_a_row_is_taken_out() -> None:
    router = Router(failure_threshold=3, cooldown_s=30)
    main, spare = backend("main"), backend("spare", priority=1)
    for _ in range(3):
        router.record_failure("main")
    assert [b.name for b in router.candidates([main, spare])] == ["spare"]


def test_a_success_resets_the_failure_count() -> None:
    router = Router(failure_threshold=3)
    router.record_failure("main")
    router.record_failure("main")
    router.record_success("main")
    router.record_failure("main")
    assert not router.breaker("main").is_open


def test_after_the_cooldown_exactly_one_trial_call_is_let_through() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10)
    breaker.record_failure(now=100.0)
    assert not breaker.allows(105.0)
    assert breaker.begin_attempt(111.0)
    assert not breaker.begin_attempt(111.5)
    breaker.record_success()
    assert breaker.begin_attempt(112.0)
    assert not breaker.is_open


def test_a_failed_trial_reopens_the_circuit_for_another_cooldown() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10)
    for _ in range(3):
        breaker.record_failure(now=100.0)
    assert breaker.begin_attempt(111.0)
    breaker.record_failure(now=111.0)
    assert not breaker.allows(115.0)
    assert breaker.allows(121.0)


def test_exact_model_names_win_over_patterns() -> None:
    routes = RoutesConfig(
        backends=[backend("a"), backend("b")],
        models={"llama-*": ["a"], "llama-3-70b": ["b"]},
    )
    assert [b.name for b in routes.backends_for("llama-3-70b") or []] == ["b"]
    assert [b.name for b in routes.backends_for("llama-3-8b") or []] == ["a"]
    assert routes.backends_for("gpt-4o") is None


def test_routes_refuse_unknown_backends_and_mixed_api_families() -> None:
    with pytest.raises(ValueError, match="unknown backends"):
        RoutesConfig(backends=[backend("a")], models={"m": ["nope"]})
    with pytest.raises(ValueError, match="mixes OpenAI and Anthropic"):
        RoutesConfig(
            backends=[backend("a"), backend("c", kind="anthropic")], models={"m": ["a", "c"]}
        )


def test_a_trial_that_ended_without_a_verdict_lets_the_next_one_run() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10)
    breaker.record_failure(now=0)
    assert breaker.begin_attempt(now=11)  # the half-open trial
    assert not breaker.begin_attempt(now=11)  # only one at a time
    breaker.abort_attempt()  # e.g. the caller went away mid-attempt
    assert breaker.begin_attempt(now=11)
