"""``python -m tollgate.fake_provider``: serve the fake provider until SIGINT or SIGTERM.

Prints ``fake provider listening on http://HOST:PORT`` once bound (``--port 0``, the default,
picks a free port), so a script starting it can read the address from the first line.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from tollgate.fake_provider.config import FakeProviderConfig
from tollgate.fake_provider.server import FakeProvider


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, FakeProviderConfig]:
    parser = argparse.ArgumentParser(prog="python -m tollgate.fake_provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--no-usage", action="store_true", help="omit usage everywhere")
    parser.add_argument("--cached-input-tokens", type=int, default=0)
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--fail-rate", type=float, default=1.0)
    parser.add_argument("--hang", action="store_true", help="never answer")
    parser.add_argument("--drop-after-chunks", type=int, default=None)
    args = parser.parse_args(argv)
    config = FakeProviderConfig(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        output_tokens=args.output_tokens,
        report_usage=not args.no_usage,
        cached_input_tokens=args.cached_input_tokens,
        reasoning_tokens=args.reasoning_tokens,
        fail_status=args.fail_status,
        fail_rate=args.fail_rate,
        hang=args.hang,
        drop_after_chunks=args.drop_after_chunks,
    )
    return args, config


async def serve(host: str, port: int, config: FakeProviderConfig) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    async with FakeProvider(config, host=host, port=port) as provider:
        print(f"fake provider listening on {provider.base_url}", flush=True)
        await stopping.wait()


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, config))
    else:
        uvloop.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
