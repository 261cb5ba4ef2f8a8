"""A fake LLM provider: a real HTTP server speaking the OpenAI and Anthropic APIs.

Tests, the demo and benchmarks put it behind the gateway as the upstream. Its behaviour —
latency, token counts, usage reporting, failures, hangs, dropped streams — is set by
``FakeProviderConfig``, patched at run time through ``/_fake/config``, or steered per request
with ``x-fake-*`` headers (see ``tollgate.fake_provider.behaviour``).

    with FakeProvider(FakeProviderConfig(output_tokens=5)) as provider:
        client = openai.OpenAI(base_url=provider.openai_base_url, api_key="sk-test")
"""

from __future__ import annotations

from tollgate.fake_provider.config import FakeProviderConfig
from tollgate.fake_provider.server import FakeProvider, create_app
from tollgate.fake_provider.tokens import count_prompt_tokens

__all__ = ["FakeProvider", "FakeProviderConfig", "count_prompt_tokens", "create_app"]
