"""``tollgate demo``: ``up`` with a fake provider, demo tenants and their traffic.

Within a minute of starting, Acme's daily budget is spent and its calls are refused with
429, the budgets' thresholds alert, and a cost spike injected on Initech's batch key is
caught as an anomaly; the watcher prints each of these as it happens, and the dashboard
shows them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from tollgate.broker import free_port
from tollgate.demo.setup import ADMIN_KEY, KEYS, clear_demo, write_demo_config
from tollgate.settings import BOOTSTRAP_ENV, Settings, load_settings
from tollgate.supervisor import Part, child_env
from tollgate.up import UpOptions, http_ok, run_up


def run_demo(
    directory: Path,
    say: Callable[[str], None] = print,
    *,
    spike_at_s: float = 45.0,
    fresh: bool = True,
) -> int:
    """Write the demo's config under ``directory`` and run the pipeline with it.

    ``fresh`` clears what an earlier demo left there (only the demo's own files). The demo
    always runs on its own embedded broker: its made-up traffic never reaches a cluster
    named by ``KAFKA_BOOTSTRAP_SERVERS``.
    """
    if fresh:
        clear_demo(directory)
    environ = {key: value for key, value in os.environ.items() if key != BOOTSTRAP_ENV}
    if BOOTSTRAP_ENV in os.environ:
        say(f"  {BOOTSTRAP_ENV} is ignored: the demo runs on its own embedded broker")
    provider_port = free_port()
    provider_url = f"http://127.0.0.1:{provider_port}"
    demo_env = write_demo_config(directory, provider_url)
    settings = load_settings({**environ, **demo_env})
    options = UpOptions(log_dir=directory / "logs", extra_env=demo_env)
    gateway_url = f"http://127.0.0.1:{settings.gateway.port}"

    def demo_parts(settings: Settings, bootstrap: str) -> list[Part]:
        env = child_env({BOOTSTRAP_ENV: bootstrap, **demo_env})
        python = sys.executable
        return [
            Part(
                "provider",
                [
                    python,
                    "-m",
                    "tollgate.fake_provider",
                    "--port",
                    str(provider_port),
                    "--latency-ms",
                    "40",
                    "--output-tokens",
                    "1000",
                ],
                env,
                http_ok(f"{provider_url}/v1/models"),
                address=f"{provider_url}  (fake OpenAI + Anthropic provider)",
            ),
            Part(
                "watch", [python, "-m", "tollgate.demo.watch"], env, lambda: True, to_terminal=True
            ),
            Part(
                "traffic",
                [
                    python,
                    "-m",
                    "tollgate.demo.traffic",
                    "--gateway",
                    gateway_url,
                    "--spike-at",
                    str(spike_at_s),
                ],
                env,
                lambda: True,
                to_terminal=True,
            ),
        ]

    def instructions() -> None:
        reporting = f"http://127.0.0.1:{settings.reporting.port}"
        key = KEYS[2].secret
        say("")
        say("Try it yourself (any OpenAI or Anthropic SDK works; change only the base URL):")
        say(
            f"  curl {gateway_url}/v1/chat/completions -H 'authorization: Bearer {key}' "
            "-H 'content-type: application/json' "
            '-d \'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}\' -i'
        )
        say(
            f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{gateway_url}/v1', "
            f"api_key='{key}'); print(c.chat.completions.create(model='gpt-4o-mini', "
            "messages=[{'role': 'user', 'content': 'hi'}]).usage)\""
        )
        say(f"  dashboard: {reporting}/dashboard/#key={ADMIN_KEY}")
        say(f"  reporting API: {reporting}/docs  (key: {ADMIN_KEY})")
        say(
            "  notebooks: .venv/bin/pip install jupyterlab && "
            f"TOLLGATE_LAKE_PATH={(directory / 'lake').resolve()} .venv/bin/jupyter lab notebooks/"
        )
        say("")
        say("Watch below: Acme's budget runs out within a minute, then the injected spike.")

    return run_up(settings, options, say, extra_parts=demo_parts, started=instructions)
