"""The demo's callers: steady traffic from every tenant, one injected cost spike, and a
judge grading the answers.

``python -m tollgate.demo.traffic --gateway URL`` calls the gateway as applications do,
through its OpenAI and Anthropic APIs (streamed and not), until stopped. Acme's calls
spend its daily budget within the first minute, after which the gateway answers them
429; at ``--spike-at`` seconds Initech's batch key switches from small calls to large
ones on an expensive model for ``--spike-for`` seconds: the cost anomaly. Every few
seconds one line says what the gateway answered.

Every answered call is then graded, as an LLM-as-judge pipeline would: the caller posts
a ``hallucination`` evaluation (label ``hallucinated`` or ``grounded``) and a
``groundedness`` score to ``POST /v1/evaluations`` with the call's
``x-tollgate-request-id``. Each model hallucinates at its own rate, Claude noticeably more
than the GPT models; at ``--degrade-at`` seconds Claude's rate jumps (a provider change
gone wrong): the quality alert.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from tollgate.demo.setup import KEYS, DemoKey

_WORDS = [
    "usage",
    "metering",
    "cost",
    "budget",
    "token",
    "model",
    "gateway",
    "tenant",
    "anomaly",
    "lake",
]


@dataclass(frozen=True)
class Caller:
    """One key's traffic: how often it calls and with what."""

    key: DemoKey
    calls_per_s: float
    model: str
    prompt_tokens: int
    max_tokens: int
    stream_share: float = 0.3


CALLERS = {
    "acme-search": Caller(KEYS[0], 4.0, "gpt-4o", 1000, 300),
    "acme-support": Caller(KEYS[1], 2.0, "gpt-4o-mini", 600, 200),
    "globex-research": Caller(KEYS[2], 3.0, "claude-sonnet-4", 500, 150),
    "initech-batch": Caller(KEYS[3], 2.0, "gpt-4o-mini", 800, 100),
}
SPIKE = Caller(KEYS[3], 4.0, "gpt-4o", 8000, 1000)
"""Initech's batch key during the spike: ~100 times its usual spend per second."""

HALLUCINATION_RATES = {"gpt-4o": 0.03, "gpt-4o-mini": 0.06, "claude-sonnet-4": 0.2}
"""The share of each model's answers the demo's judge labels ``hallucinated``."""
DEGRADED_RATE = 0.7
"""Claude's rate after ``--degrade-at``."""
JUDGE = "demo-judge"


def _prompt(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of text (the fake provider counts 4 characters a token)."""
    words: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


async def call_once(
    client: httpx.AsyncClient, caller: Caller, rng: random.Random
) -> tuple[int, str | None]:
    """One call through the gateway: the HTTP status the caller saw, and the request id."""
    prompt = _prompt(caller.prompt_tokens, rng)
    stream = rng.random() < caller.stream_share
    if caller.model.startswith("claude"):
        path, headers = "/v1/messages", {"x-api-key": caller.key.secret}
        body = {
            "model": caller.model,
            "max_tokens": caller.max_tokens,
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        }
        headers["anthropic-version"] = "2023-06-01"
    else:
        path, headers = "/v1/chat/completions", {"authorization": f"Bearer {caller.key.secret}"}
        body = {
            "model": caller.model,
            "max_tokens": caller.max_tokens,
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        }
    try:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            async for _ in response.aiter_bytes():
                pass
            return response.status_code, response.headers.get("x-tollgate-request-id")
    except httpx.HTTPError:
        return 0, None


async def judge(
    client: httpx.AsyncClient,
    caller: Caller,
    request_id: str,
    hallucination_rate: float,
    rng: random.Random,
) -> int:
    """Grade one answered call: two evaluations; returns how many the gateway took."""
    hallucinated = rng.random() < hallucination_rate
    grounded = rng.betavariate(2, 5) if hallucinated else rng.betavariate(8, 2)
    verdicts = [
        {
            "name": "hallucination",
            "score_label": "hallucinated" if hallucinated else "grounded",
            "score_value": 1.0 if hallucinated else 0.0,
        },
        {"name": "groundedness", "score_value": round(grounded, 3)},
    ]
    taken = 0
    for verdict in verdicts:
        body = {"request_id": request_id, **verdict, "evaluator": JUDGE}
        try:
            response = await client.post(
                "/v1/evaluations",
                json=body,
                headers={"authorization": f"Bearer {caller.key.secret}"},
            )
        except httpx.HTTPError:
            continue
        taken += response.status_code == 201
    return taken


def hallucination_rate(model: str, elapsed_s: float, degrade_at_s: float) -> float:
    if model.startswith("claude") and elapsed_s >= degrade_at_s:
        return DEGRADED_RATE
    return HALLUCINATION_RATES.get(model, 0.05)


async def run_traffic(
    gateway: str, spike_at_s: float, spike_for_s: float, seed: int, degrade_at_s: float = 75.0
) -> None:
    rng = random.Random(seed)
    counts: Counter[tuple[str, int]] = Counter()
    judged: Counter[str] = Counter()
    began = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=gateway, timeout=60, limits=limits) as client,
        asyncio.TaskGroup() as group,
    ):

        async def drive(name: str, normal: Caller) -> None:
            while not stop.is_set():
                elapsed = time.monotonic() - began
                spiking = (
                    name == "initech-batch" and spike_at_s <= elapsed < spike_at_s + spike_for_s
                )
                caller = SPIKE if spiking else normal
                rate = hallucination_rate(caller.model, elapsed, degrade_at_s)
                group.create_task(_counted(client, caller, rng, counts, name, rate, judged))
                # Poisson arrivals at the caller's rate.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.expovariate(caller.calls_per_s))

        for name, caller in CALLERS.items():
            group.create_task(drive(name, caller))
        group.create_task(
            _report(counts, judged, began, (spike_at_s, spike_for_s, degrade_at_s), stop)
        )


async def _counted(
    client: httpx.AsyncClient,
    caller: Caller,
    rng: random.Random,
    counts: Counter[tuple[str, int]],
    name: str,
    rate: float,
    judged: Counter[str],
) -> None:
    status, request_id = await call_once(client, caller, rng)
    counts[(name, status)] += 1
    if status == 200 and request_id:
        judged[caller.model] += await judge(client, caller, request_id, rate, rng)


async def _report(
    counts: Counter[tuple[str, int]],
    judged: Counter[str],
    began: float,
    moments: tuple[float, float, float],
    stop: asyncio.Event,
) -> None:
    spike_at_s, spike_for_s, degrade_at_s = moments
    said_spike = said_429 = said_degraded = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
        elapsed = time.monotonic() - began
        per_key = []
        for name in CALLERS:
            ok = counts[(name, 200)]
            refused = counts[(name, 429)]
            other = sum(n for (who, status), n in counts.items() if who == name) - ok - refused
            per_key.append(f"{name} {ok} ok" + (f" {refused} refused (429)" if refused else ""))
            per_key[-1] += f" {other} failed" if other else ""
        print(f"traffic t={elapsed:4.0f}s  " + " · ".join(per_key), flush=True)
        if judged:
            graded = " · ".join(f"{model} {n}" for model, n in sorted(judged.items()))
            print(f"judge   t={elapsed:4.0f}s  evaluations posted: {graded}", flush=True)
        if not said_degraded and elapsed >= degrade_at_s:
            before = HALLUCINATION_RATES["claude-sonnet-4"]
            print(
                f"traffic: quality drop injected: claude-sonnet-4 now hallucinates "
                f"{DEGRADED_RATE:.0%} of its answers (was {before:.0%})",
                flush=True,
            )
            said_degraded = True
        if not said_429 and any(status == 429 for _, status in counts):
            print("traffic: the gateway now refuses Acme's calls (429): budget spent", flush=True)
            said_429 = True
        if not said_spike and elapsed >= spike_at_s:
            print(
                f"traffic: cost spike injected: initech-batch calls gpt-4o with 8k-token prompts "
                f"for {spike_for_s:.0f} s",
                flush=True,
            )
            said_spike = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tollgate.demo.traffic")
    parser.add_argument("--gateway", required=True, help="the gateway's base URL")
    parser.add_argument("--spike-at", type=float, default=45.0, help="seconds after the start")
    parser.add_argument("--spike-for", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--degrade-at",
        type=float,
        default=75.0,
        help="seconds after the start: Claude's answers turn bad",
    )
    args = parser.parse_args(argv)
    asyncio.run(
        run_traffic(args.gateway, args.spike_at, args.spike_for, args.seed, args.degrade_at)
    )


if __name__ == "__main__":
    main()
