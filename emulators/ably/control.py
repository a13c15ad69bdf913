"""The admin surface under ``/_emulator`` (no auth, JSON in and out): inspect messages and counters,
inject and clear faults, reset, change settings at runtime, and follow a channel as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from emulators.ably.config import EmulatorConfig
from emulators.ably.errors import json_response
from emulators.ably.faults import DEFAULT_REFUSE_S, FaultBook, parse_fault
from emulators.ably.store import Store

STREAM_QUEUE_MAX: Final = 10_000  # a subscriber this far behind is dropped rather than grow memory
STREAM_KEEPALIVE_S: Final = 1.0  # comment-line cadence; how soon a stream notices a gone subscriber


def _bad_request(message: str) -> web.Response:
    return json_response({"error": message}, status=400)


async def _json_body(request: web.Request) -> Any:
    body = await request.read()
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=orjson.dumps({"error": f"invalid JSON: {exc}"}).decode()) from exc


class Emulator(Protocol):
    """What the admin surface needs from the emulator (`server.AblyEmulator`), so that this module does
    not import the server that serves it."""

    clock: Callable[[], float]
    config: EmulatorConfig
    store: Store
    faults: FaultBook
    stopping: bool

    def stats(self) -> dict[str, Any]: ...

    def active_faults(self) -> list[dict[str, Any]]: ...

    def clear_faults(self) -> None: ...

    def refuse_for(self, duration_s: float) -> None: ...

    def disconnect_realtime(self, duration_s: float) -> None: ...

    def reset(self) -> None: ...

    def configure(self, **changes: Any) -> dict[str, Any]: ...

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]: ...


class ControlApi:
    """Handlers for ``/_emulator/*``; the emulator object does the work."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._streams: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def close_streams(self) -> None:
        """End every open event stream (at shutdown): each gets a None sentinel ahead of its backlog."""
        for queue in self._streams:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    def add_routes(self, app: web.Application) -> None:
        """Register the admin endpoints on ``app``."""
        router = app.router
        router.add_get("/_emulator/messages", self.messages)
        router.add_get("/_emulator/stats", self.stats)
        router.add_get("/_emulator/faults", self.list_faults)
        router.add_post("/_emulator/faults", self.add_fault)
        router.add_delete("/_emulator/faults", self.clear_faults)
        router.add_post("/_emulator/reset", self.reset)
        router.add_get("/_emulator/config", self.get_config)
        router.add_post("/_emulator/config", self.set_config)
        router.add_get("/_emulator/stream", self.stream)

    async def messages(self, request: web.Request) -> web.Response:
        """All delivered messages in arrival order; ``channel`` filters, ``since=N`` skips the first N."""
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return _bad_request("since must be an integer")
        # Straight to JSON: the stored extras are embedded as they are, not decoded and encoded again.
        return json_response(self._emulator.store.messages_for_json(request.query.get("channel"), since))

    async def stats(self, request: web.Request) -> web.Response:
        """Counters: requests, publish requests, delivered, duplicates, rejected, faults, per status."""
        return json_response(self._emulator.stats())

    async def list_faults(self, request: web.Request) -> web.Response:
        """The faults still in force (and the refusal deadline, if refusing)."""
        return json_response({"faults": self._emulator.active_faults()})

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        """Inject one fault (an object) or several (a list); ``refuse`` answers, then stops listening."""
        body = await _json_body(request)
        specs = body if isinstance(body, list) else [body]
        if not specs or not all(isinstance(s, dict) for s in specs):
            return _bad_request("expected a fault object or a list of them")
        try:
            faults = [parse_fault(spec, self._emulator.clock()) for spec in specs]
        except (ValueError, TypeError) as exc:
            return _bad_request(str(exc))
        refusals = [f for f in faults if f.mode == "refuse"]
        for fault in faults:
            if fault.mode == "disconnect":
                self._emulator.disconnect_realtime(fault.duration_s or DEFAULT_REFUSE_S)
            elif fault.mode != "refuse":
                self._emulator.faults.add(fault)
        response = json_response({"faults": [f.public() for f in faults]})
        if not refusals:
            return response
        # The reply must leave before the listener and every connection (this one too) are closed.
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        self._emulator.refuse_for(refusals[-1].duration_s or DEFAULT_REFUSE_S)
        return response

    async def clear_faults(self, request: web.Request) -> web.Response:
        """Clear every fault (ends a refusal early when called through the Python API)."""
        self._emulator.clear_faults()
        return json_response({"cleared": True})

    async def reset(self, request: web.Request) -> web.Response:
        """Forget messages, dedupe state, counters and faults; restore the startup settings."""
        self._emulator.reset()
        return json_response({"reset": True})

    async def get_config(self, request: web.Request) -> web.Response:
        """Current settings."""
        return json_response(self._emulator.config.public())

    async def set_config(self, request: web.Request) -> web.Response:
        """Change latency_ms, max_message_size, channel_rate_limit, dedupe_window_s, keys or tokens."""
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _bad_request("expected an object of settings")
        try:
            return json_response(self._emulator.configure(**body))
        except (ValueError, TypeError) as exc:
            return _bad_request(str(exc))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``data:`` line of JSON per message delivered from now on.

        ``channel`` filters; ``replay=1`` first sends what was delivered already.
        """
        channel = request.query.get("channel")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=STREAM_QUEUE_MAX)

        def listener(stored: dict[str, Any]) -> None:
            if channel is None or stored["channel"] == channel:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(stored)

        store = self._emulator.store
        # Listen before answering and snapshot in the same step (no await between): messages are only
        # published on this loop, so the replay and the live feed neither overlap nor leave a gap.
        store.add_listener(listener)
        self._streams.add(queue)
        replay = self._emulator.messages(channel) if request.query.get("replay") in ("1", "true") else []
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            for stored in replay:
                await response.write(b"data: " + orjson.dumps(stored) + b"\n\n")
            while not self._emulator.stopping:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=STREAM_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await response.write(b"data: " + orjson.dumps(item) + b"\n\n")
        except ConnectionResetError:
            pass  # the subscriber went away
        finally:
            self._streams.discard(queue)
            store.remove_listener(listener)
        return response
