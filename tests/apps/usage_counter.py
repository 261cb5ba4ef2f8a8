"""A minimal Faust app for the tests: counts usage events per tenant in a table and
acknowledges each one on an echo topic, configured only through Tollgate's settings.

Run: python -m tests.apps.usage_counter worker   (environment as for any Tollgate process)
"""

from __future__ import annotations

import faust

from stream.faust_options import faust_options
from tollgate.contract import UsageEvent, decode
from tollgate.settings import load_settings

settings = load_settings()
assert settings.kafka.bootstrap_servers is not None
topics = settings.kafka.topics()
app = faust.App(
    f"{topics.prefix}usage-counter", **faust_options(settings, settings.kafka.bootstrap_servers)
)
usage_topic = app.topic(topics.usage, key_serializer="raw", value_serializer="raw")
echo_topic = app.topic(f"{topics.prefix}test.echo", key_serializer="raw", value_serializer="raw")
calls_per_tenant = app.Table("calls-per-tenant", default=int)


@app.agent(usage_topic, concurrency=1)
async def count(stream: faust.StreamT[bytes]) -> None:
    async for payload in stream:
        event = decode(payload, UsageEvent)
        calls_per_tenant[event.tenant] += 1
        reply = f"{event.event_id} {calls_per_tenant[event.tenant]}".encode()
        await echo_topic.send(key=(event.tenant or "").encode(), value=reply)


if __name__ == "__main__":
    app.main()
