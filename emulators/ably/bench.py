"""Throughput of the emulator through batch publish, one BatchSpec per message (the connector's shape).

``python -m emulators.ably.bench --messages 100000 --per-request 100 --concurrency 4``
starts the CLI as a subprocess (so client and server do not share a core), publishes, checks that every
message was delivered exactly once, and prints messages/s and the server's CPU seconds per 10k messages.
``--per-request 500 --channels 100 --payload-bytes 1200`` is the connector's shape under ``make bench``.
A script, not a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any, Final

import httpx
import orjson

from emulators.ably.client import AblyEmulatorAdmin

READY_PREFIX: Final = "ably emulator listening on "
PAYLOAD_BYTES: Final = 300  # roughly a small change event as Extended JSON (--payload-bytes)
REQUEST_TIMEOUT_S: Final = 30.0


def _spec(seq: int, channels: int, payload_bytes: int) -> dict[str, Any]:
    data = orjson.dumps({"operationType": "insert", "seq": seq, "pad": "x" * payload_bytes}).decode()
    message = {
        "id": f"{seq:016x}",
        "name": "insert",
        "data": data,
        "encoding": "json",
        "extras": {"headers": {"x-ably-models-event-uuid": f"uuid-{seq}"}},
    }
    return {"channels": f"bench:{seq % channels}", "messages": message}


async def _publish(
    url: str, total: int, per_request: int, concurrency: int, channels: int, payload_bytes: int
) -> float:
    bodies = [
        orjson.dumps(
            [_spec(seq, channels, payload_bytes) for seq in range(start, min(start + per_request, total))]
        )
        for start in range(0, total, per_request)
    ]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"X-Ably-Version": "6", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, auth=("app.key", "secret"), headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as http:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                response = await http.post("/messages", content=body)
                response.raise_for_status()

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc; fields 14 and 15 of stat, in ticks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    """Run the benchmark; exit 1 if any message was lost or duplicated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-request", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--channel-rate-limit", type=float, default=0.0, help="per channel, messages/s (0 = off)"
    )
    parser.add_argument("--payload-bytes", type=int, default=PAYLOAD_BYTES, help="padding in each data")
    args = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "emulators.ably",
        "--port",
        "0",
        "--latency-ms",
        str(args.latency_ms),
        "--channel-rate-limit",
        str(args.channel_rate_limit),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline()[len(READY_PREFIX) :].strip()
            cpu_before = _cpu_seconds(server.pid)
            elapsed = asyncio.run(
                _publish(
                    url, args.messages, args.per_request, args.concurrency, args.channels, args.payload_bytes
                )
            )
            server_cpu = _cpu_seconds(server.pid) - cpu_before
            stats = AblyEmulatorAdmin(url).stats()
        finally:
            server.terminate()
            server.wait(timeout=REQUEST_TIMEOUT_S)
    delivered = stats["messages_delivered"]
    print(
        f"{args.messages} messages, {args.per_request}/request, concurrency {args.concurrency}, "
        f"latency {args.latency_ms:g} ms, channel rate limit {args.channel_rate_limit:g}/s: "
        f"{elapsed:.2f} s, {args.messages / elapsed:,.0f} messages/s, "
        f"delivered {delivered}, duplicates {stats['duplicates_dropped']}; "
        f"server CPU {server_cpu:.2f} s = {args.messages / server_cpu:,.0f} messages per server CPU second, "
        f"{server_cpu / args.messages * 10_000:.3f} CPU-s per 10k messages"
    )
    return 0 if delivered == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
