"""``python -m emulators.ably --port 8081 --key app.key:secret``: run the emulator until SIGTERM/SIGINT.

Prints exactly one line, ``ably emulator listening on http://HOST:PORT``, once it accepts connections,
so a parent process can wait for it; exits 0 on a signal, 1 if it cannot bind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from typing import Final

from emulators.ably.config import (
    BATCH_RESPONSES,
    DEFAULT_CONNECTION_STATE_TTL_S,
    DEFAULT_DEDUPE_WINDOW_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_KEY,
)
from emulators.ably.messages import DEFAULT_MAX_MESSAGE_SIZE
from emulators.ably.server import AblyEmulator

logger = logging.getLogger("emulators.ably")

# The collector's thresholds for this process (CPython's defaults: 700, 10, 10). A batch publish allocates
# thousands of short-lived containers (the parsed body), so with the defaults the collector runs several
# times per request and a full collection, which visits every message the store keeps, about every 10k
# messages: at 100k messages that cost more CPU than the publishing itself. Set for the CLI only (the
# process is the emulator's own); an emulator embedded in another process leaves its collector alone.
GC_THRESHOLDS: Final = (10_000, 20, 20)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m emulators.ably", description="Ably emulator (REST and realtime)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port (printed)")
    parser.add_argument(
        "--key", action="append", dest="keys", help=f"appId.keyId:secret, repeatable (default {DEFAULT_KEY})"
    )
    parser.add_argument("--token", action="append", dest="tokens", default=[], help="accepted bearer token")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every response")
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    parser.add_argument(
        "--channel-rate-limit", type=float, default=0.0, help="messages/s per channel, 0 = off"
    )
    parser.add_argument("--dedupe-window-s", type=float, default=DEFAULT_DEDUPE_WINDOW_S)
    parser.add_argument(
        "--connection-state-ttl-s",
        type=float,
        default=DEFAULT_CONNECTION_STATE_TTL_S,
        help="how long a dropped realtime connection can be resumed (sent to clients)",
    )
    parser.add_argument(
        "--heartbeat-interval-s",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL_S,
        help="most idle time on a realtime connection before a heartbeat (maxIdleInterval)",
    )
    parser.add_argument(
        "--batch-response",
        choices=BATCH_RESPONSES,
        default="legacy",
        help="batch publish answers: legacy (v2 shape always) or by_version (BatchResults from version 3)",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def serve(emulator: AblyEmulator) -> int:
    """Run until a termination signal; the signal handler only sets an event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await emulator.start()
        except OSError as exc:
            print(f"ably emulator cannot listen on {emulator.host}: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"ably emulator listening on {emulator.url}", flush=True)
        await stop.wait()
    finally:
        await emulator.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 after a signal, 1 if the port cannot be bound, 2 for invalid options."""
    args = parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        emulator = AblyEmulator(
            host=args.host,
            port=args.port,
            keys=args.keys or [DEFAULT_KEY],
            tokens=args.tokens,
            latency_ms=args.latency_ms,
            max_message_size=args.max_message_size,
            channel_rate_limit=args.channel_rate_limit,
            dedupe_window_s=args.dedupe_window_s,
            connection_state_ttl_s=args.connection_state_ttl_s,
            heartbeat_interval_s=args.heartbeat_interval_s,
            batch_response=args.batch_response,
        )
    except ValueError as exc:  # an invalid key or setting
        print(f"ably emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    return asyncio.run(serve(emulator))


if __name__ == "__main__":
    sys.exit(main())
