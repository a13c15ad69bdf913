"""`make demo` / `python -m demo`: watch changes flow from MongoDB to Ably channels, live.

Starts three real processes — the MongoDB replica-set emulator, the Ably emulator and the connector
(`python -m connector run`, configured only by environment variables, as in production, with
`pipelines/models-sdk-collection.json`) — and the application backend with a web page where a Models SDK
model shows the orders live beside the connector's metrics (`demo.stack`); then writes a stream of sample
changes (inserts, updates, deletes on a few orders) and prints what the Ably channel receives as it arrives.

Ctrl-C (or SIGTERM) stops it in the order the data flows: no more writes; wait (boundedly) until Ably has
received every change written; SIGTERM the connector, which drains and stores its resume token; then
stop the emulators; print a one-paragraph summary and exit 0. The children run in their own sessions,
so a terminal's Ctrl-C reaches only the demo.

Only `DEMO_*` variables tune it: DEMO_SECONDS=N stops by itself after N seconds, DEMO_LOG_LEVEL sets the
connector's log level (default WARNING), DEMO_ENCRYPT=1 encrypts the channel with a fresh random key
(CHANNEL_CIPHER_KEY): the page and this view hold the key, Ably sees only ciphertext. The rest of the
environment (an exported PIPELINE, ABLY_API_KEY, MONGODB_*, LOG_LEVEL …) and a `.env` file are ignored:
see `demo.processes.child_env`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import time
from typing import Any, Final

import httpx
import orjson
from pymongo import AsyncMongoClient

from connector.ably.cipher import BLOCK_SIZE
from demo.stack import COLLECTION, DATABASE, Stack
from demo.summary import RunSummary
from emulators.ably import AblyEmulatorAdmin

PIPELINE: Final = "models-sdk-collection.json"  # one channel, `orders`: the page's list model
ORDERS: Final = ["order-1", "order-2", "order-3"]
STATUSES: Final = ["placed", "paid", "packed", "shipped", "delivered"]
WRITE_PAUSE_S: Final = 0.3  # between sample writes: slow enough to read along
POLL_S: Final = 0.1  # how often the terminal view asks the Ably emulator for new messages
CATCH_UP_TIMEOUT_S: Final = 10.0  # at stop: longest wait for Ably to receive what was written
ENCRYPT_KNOB: Final = "DEMO_ENCRYPT"  # 1: the connector encrypts the channel, the page and the view decrypt
COLOURS: Final = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m"]
RESET: Final = "\033[0m"


async def write_changes(uri: str, stopping: asyncio.Event, summary: RunSummary) -> None:
    """A live stream of sample changes across a few orders (each order is its own channel).

    Checks ``stopping`` between writes (never cancelled mid-write), so the count of writes is exact.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    orders = client[DATABASE][COLLECTION]
    total = 10

    async def pause() -> bool:
        """Wait between writes; True when the demo is stopping."""
        try:
            await asyncio.wait_for(stopping.wait(), WRITE_PAUSE_S)
        except TimeoutError:
            return False
        return True

    try:
        while not stopping.is_set():
            for order_id in ORDERS:
                total = total % 90 + 7
                await orders.insert_one({"_id": order_id, "status": STATUSES[0], "total": total})
                summary.written += 1
                if await pause():
                    return
            for status in STATUSES[1:]:
                for order_id in ORDERS:
                    await orders.update_one({"_id": order_id}, {"$set": {"status": status}})
                    summary.written += 1
                    if await pause():
                        return
            for order_id in ORDERS:
                await orders.delete_one({"_id": order_id})
                summary.written += 1
                if await pause():
                    return
    finally:
        await client.close()


class ChannelView:
    """Prints each message as the Ably emulator receives it, as a subscriber would see it."""

    def __init__(self, admin: AblyEmulatorAdmin, summary: RunSummary, cipher_key: str | None = None) -> None:
        self._admin = admin
        self._summary = summary
        self._key = base64.b64decode(cipher_key) if cipher_key else None
        self._colours: dict[str, str] = {}
        self._tty = sys.stdout.isatty()

    async def poll(self) -> None:
        """Print the messages that arrived since the last poll."""
        for msg in await self._admin.amessages(since=self._summary.delivered):
            self._summary.record_delivery(msg["channel"], msg["id"])
            self._print(msg)

    def _plaintext(self, msg: dict[str, Any]) -> Any:
        """The message's data as a subscriber holding the key reads it (`json`, or encrypted JSON)."""
        encoding = msg.get("encoding") or ""
        if encoding == "json":
            return orjson.loads(msg["data"])
        if self._key is None or not encoding.startswith("json/utf-8/cipher+"):
            return {}
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        raw = base64.b64decode(msg["data"])
        decryptor = Cipher(algorithms.AES(self._key), modes.CBC(raw[:BLOCK_SIZE])).decryptor()
        padded = decryptor.update(raw[BLOCK_SIZE:]) + decryptor.finalize()
        return orjson.loads(padded[: -padded[-1]])

    def _print(self, msg: dict[str, Any]) -> None:
        event = self._plaintext(msg)
        document = str(event.get("documentKey", {}).get("_id", ""))
        label = f"[{msg['channel']}]"
        if self._tty:  # one colour per document
            colour = self._colours.setdefault(document, COLOURS[len(self._colours) % len(COLOURS)])
            label = f"{colour}{label}{RESET}"
        detail = event.get("fullDocument") or event.get("updateDescription", {}).get("updatedFields") or {}
        name = msg.get("name") or ""
        print(f"{label} {name:<8} {document:<8} {orjson.dumps(detail).decode()}", flush=True)

    async def follow(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_S)

    async def catch_up(self, timeout: float = CATCH_UP_TIMEOUT_S) -> bool:
        """Poll until Ably has received as many messages as changes were written (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            await self.poll()
            if self._summary.delivered >= self._summary.written:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)


async def stored_token(uri: str, connector_id: str) -> str | None:
    """The resume token the connector stored (`ably` collection, `_id` = its CONNECTOR_ID)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        doc = await client[DATABASE]["ably"].find_one({"_id": connector_id})
    finally:
        await client.close()
    token = (doc or {}).get("resumeToken") or {}
    data = token.get("_data")
    return data if isinstance(data, str) else None


class Demo:
    """The demo's lifecycle: start children, run the writer and the view, stop in data-flow order."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.summary = RunSummary()

    def on_signal(self, signum: int) -> None:
        """Signal handler: only records the request (a second signal just says we are on it)."""
        if self.stopping.is_set():
            print("already stopping; this takes a few seconds", file=sys.stderr, flush=True)
            return
        print(f"\n{signal.Signals(signum).name}: stopping…", flush=True)
        self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        key = base64.b64encode(os.urandom(32)).decode() if os.environ.get(ENCRYPT_KNOB) == "1" else None
        stack = Stack([PIPELINE], cipher_key=key)
        try:
            return await self._run(stack)
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            await stack.stop()  # idempotent: after a clean run only the backend and emulators are left

    async def _run(self, stack: Stack) -> int:
        info = await stack.start()
        print(f"MongoDB replica-set emulator: {info['mongodb']}")
        print(f"Ably emulator (REST and realtime): {info['ably']}")
        [connector_info] = info["connectors"].values()
        print(f"connector {connector_info['id']} ready (metrics: {connector_info['metrics']})")
        if info["pageProblem"]:
            print(f"web page unavailable: {info['pageProblem']}")
        else:
            print(f"web page (a Models SDK model of the orders): {info['backend']}/")
        if info["cipherKey"]:
            print(
                "channels encrypted (CHANNEL_CIPHER_KEY, aes-256-cbc): Ably stores only ciphertext; the page"
            )
            print("and the lines below decrypt with the key")
        print("writing sample changes — Ctrl-C to stop\n", flush=True)
        seconds = float(os.environ.get("DEMO_SECONDS", "0"))
        if seconds:
            asyncio.get_running_loop().call_later(seconds, self.stopping.set)

        [connector] = stack.connectors.values()
        admin = AblyEmulatorAdmin(info["ably"])
        view = ChannelView(admin, self.summary, info["cipherKey"])
        connector_exit = asyncio.create_task(connector.proc.wait())
        stop_requested = asyncio.create_task(self.stopping.wait())
        async with asyncio.TaskGroup() as group:
            group.create_task(write_changes(info["mongodb"], self.stopping, self.summary))
            group.create_task(view.follow(self.stopping))
            await asyncio.wait([connector_exit, stop_requested], return_when=asyncio.FIRST_COMPLETED)
            self.stopping.set()  # the writer and the view end at their next check
        stop_requested.cancel()

        self.summary.caught_up = connector.running and await view.catch_up()
        started = time.monotonic()
        [self.summary.connector_status] = (await stack.stop_connectors()).values()
        self.summary.connector_stop_s = time.monotonic() - started
        self.summary.token = await stored_token(info["mongodb"], connector_info["id"])
        await view.poll()  # anything the connector published while draining
        self.summary.duplicates_dropped = int((await admin.astats())["duplicates_dropped"])
        await stack.stop()
        print("\n" + self.summary.text(f"{DATABASE}.{COLLECTION}"), flush=True)
        return 0 if self.summary.connector_status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(Demo().run()))
