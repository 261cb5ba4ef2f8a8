"""The demo's callers: steady traffic from every tenant, and one injected cost spike.

``python -m tollgate.demo.traffic --gateway URL`` calls the gateway as applications do,
through its OpenAI and Anthropic APIs (streamed and not), until stopped. Acme's calls
spend its daily budget within the first minute, after which the gateway answers them
429; at ``--spike-at`` seconds Initech's batch key switches from small calls to large
ones on an expensive model for ``--spike-for`` seconds: the cost anomaly. Every few
seconds one line says what the gateway answered.
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


def _prompt(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of text (the fake provider counts 4 characters a token)."""
    words: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


async def call_once(client: httpx.AsyncClient, caller: Caller, rng: random.Random) -> int:
    """One call through the gateway; returns the HTTP status the caller saw."""
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
            return response.status_code
    except httpx.HTTPError:
        return 0


async def run_traffic(gateway: str, spike_at_s: float, spike_for_s: float, seed: int) -> None:
    rng = random.Random(seed)
    counts: Counter[tuple[str, int]] = Counter()
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
                group.create_task(_counted(client, caller, rng, counts, name))
                # Poisson arrivals at the caller's rate.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.expovariate(caller.calls_per_s))

        for name, caller in CALLERS.items():
            group.create_task(drive(name, caller))
        group.create_task(_report(counts, began, spike_at_s, spike_for_s, stop))


async def _counted(
    client: httpx.AsyncClient,
    caller: Caller,
    rng: random.Random,
    counts: Counter[tuple[str, int]],
    name: str,
) -> None:
    counts[(name, await call_once(client, caller, rng))] += 1


async def _report(
    counts: Counter[tuple[str, int]],
    began: float,
    spike_at_s: float,
    spike_for_s: float,
    stop: asyncio.Event,
) -> None:
    said_spike = said_429 = False
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
    args = parser.parse_args(argv)
    asyncio.run(run_traffic(args.gateway, args.spike_at, args.spike_for, args.seed))


if __name__ == "__main__":
    main()
