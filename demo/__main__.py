"""`make demo` / `python -m demo`: watch changes flow from MongoDB to Ably channels, live.

Starts three real processes — the MongoDB replica-set emulator, the Ably REST emulator and the connector
(`python -m connector run`, configured only by environment variables, as in production) — then writes a
stream of sample changes (inserts, updates, deletes on a few orders) and prints what each Ably channel
receives as it arrives. Ctrl-C stops everything cleanly (the connector drains and stores its token).
DEMO_SECONDS=N stops by itself after N seconds (used by the test suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from pymongo import AsyncMongoClient

from emulators.ably import AblyEmulatorAdmin

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "demo.key:demo-secret"
ORDERS = ["order-1", "order-2", "order-3"]
STARTUP_TIMEOUT_S = 30.0
COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m"]
RESET = "\033[0m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(
    name: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a Python module and wait for its first stdout line (its ready line)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
    if not line:
        raise RuntimeError(f"{name} exited before it was ready (status {await proc.wait()})")
    return proc, line.decode().strip()


async def stop(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


async def write_changes(uri: str, stopping: asyncio.Event) -> None:
    """A live stream of sample changes across a few orders (each order is its own channel)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    orders = client["shop"]["orders"]
    rng = random.Random(7)
    statuses = ["placed", "paid", "packed", "shipped", "delivered"]
    try:
        while not stopping.is_set():
            for order_id in ORDERS:
                await orders.insert_one(
                    {"_id": order_id, "status": statuses[0], "total": rng.randint(10, 99)}
                )
                await asyncio.sleep(0.3)
            for status in statuses[1:]:
                for order_id in ORDERS:
                    await orders.update_one({"_id": order_id}, {"$set": {"status": status}})
                    await asyncio.sleep(0.3)
            for order_id in ORDERS:
                await orders.delete_one({"_id": order_id})
                await asyncio.sleep(0.3)
    finally:
        await client.close()


async def show_channels(admin: AblyEmulatorAdmin, stopping: asyncio.Event) -> None:
    """Print each message as the Ably emulator receives it, as a subscriber would see it."""
    seen = 0
    colours: dict[str, str] = {}
    while not stopping.is_set():
        for msg in await admin.amessages(since=seen):
            seen += 1
            channel = msg["channel"]
            colour = colours.setdefault(channel, COLOURS[len(colours) % len(COLOURS)])
            event = orjson.loads(msg["data"]) if msg.get("encoding") == "json" else msg["data"]
            detail = (
                event.get("fullDocument") or event.get("updateDescription", {}).get("updatedFields") or {}
            )
            print(
                f"{colour}[{channel}]{RESET} {msg.get('name') or '':<8} {orjson.dumps(detail).decode()}",
                flush=True,
            )
        await asyncio.sleep(0.1)


async def main() -> int:
    mongo_port, ably_port = free_port(), free_port()
    procs: list[asyncio.subprocess.Process] = []
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        mongo, uri = await start("MongoDB emulator", ["emulators.mongodb", "--port", str(mongo_port)])
        procs.append(mongo)
        print(f"MongoDB replica-set emulator: {uri}")
        ably, ready = await start(
            "Ably emulator", ["emulators.ably", "--port", str(ably_port), "--key", API_KEY]
        )
        procs.append(ably)
        ably_url = f"http://127.0.0.1:{ably_port}"
        print(f"Ably REST emulator: {ready}")
        env = {
            **os.environ,
            "MONGODB_URI": uri,
            "MONGODB_DATABASE": "shop",
            "MONGODB_COLLECTION": "orders",
            "PIPELINE_FILE": str(ROOT / "pipelines" / "channel-per-document.json"),
            "FULL_DOCUMENT": "updateLookup",
            "ABLY_API_KEY": API_KEY,
            "ABLY_REST_URL": ably_url,
            "HTTP_PORT": str(free_port()),
            "LOG_FORMAT": "text",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
        connector = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connector", "run", env=env, cwd=ROOT
        )
        procs.append(connector)
        print(f"connector started (health on :{env['HTTP_PORT']}); writing sample changes — Ctrl-C to stop\n")
        seconds = float(os.environ.get("DEMO_SECONDS", "0"))
        if seconds:
            loop.call_later(seconds, stopping.set)
        admin = AblyEmulatorAdmin(ably_url)
        tasks = [
            asyncio.create_task(write_changes(uri, stopping)),
            asyncio.create_task(show_channels(admin, stopping)),
            asyncio.create_task(stopping.wait()),
            asyncio.create_task(connector.wait()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stopping.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        started = time.monotonic()
        status = await stop(connector)
        print(f"\nconnector stopped with status {status} in {time.monotonic() - started:.1f}s")
        stats = await admin.astats()
        print(f"Ably emulator received {stats.get('messages_delivered', stats)} messages")
        return 0 if status == 0 else 1
    finally:
        for proc in reversed(procs):
            await stop(proc, 10.0)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
