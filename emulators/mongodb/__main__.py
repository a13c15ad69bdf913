"""``python -m emulators.mongodb --port 27017``: print the connection URI once listening; SIGTERM stops."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .server import MongoEmulator


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.mongodb", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017, help="0 picks a free port")
    parser.add_argument("--replset", default="rs0")
    parser.add_argument("--server-version", default="7.0.0")
    parser.add_argument("--oplog-size", type=int, default=1_000_000, help="events kept for resuming")
    parser.add_argument(
        "--standalone", action="store_true", help="behave as a standalone (no change streams)"
    )
    parser.add_argument(
        "--ttl-monitor-sleep-secs",
        type=float,
        default=60.0,
        help="seconds between TTL monitor passes (mongod's ttlMonitorSleepSecs)",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with MongoEmulator(
        host=args.host,
        port=args.port,
        replset=args.replset,
        server_version=args.server_version,
        oplog_size=args.oplog_size,
        standalone=args.standalone,
        ttl_monitor_sleep_s=args.ttl_monitor_sleep_secs,
    ) as server:
        print(server.uri, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(_main(args))
    except OSError as exc:
        print(f"cannot start the emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
