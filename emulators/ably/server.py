"""The emulator's lifecycle: an aiohttp app (REST, realtime WebSockets, admin) served from a socket the
emulator binds itself, so that a ``refuse`` fault can stop listening and later listen again on the SAME
port; plus the thread-safe Python inspection API and ``run_in_thread`` for synchronous tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Final

from aiohttp import web

from emulators.ably.config import (
    DEFAULT_CONNECTION_STATE_TTL_S,
    DEFAULT_DEDUPE_WINDOW_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_KEY,
    EmulatorConfig,
)
from emulators.ably.control import ControlApi
from emulators.ably.cors import cors_middleware
from emulators.ably.faults import DEFAULT_REFUSE_S, FaultBook, parse_fault
from emulators.ably.messages import DEFAULT_MAX_MESSAGE_SIZE
from emulators.ably.realtime import RealtimeHub
from emulators.ably.rest import MAX_BODY_BYTES, RestApi
from emulators.ably.store import Store
from emulators.net import close_server

logger = logging.getLogger(__name__)

# aiohttp's default 1 MiB body cap would answer before our own 2 MiB check could render an Ably error.
CLIENT_MAX_SIZE: Final = 4 * MAX_BODY_BYTES
LISTEN_BACKLOG: Final = 1024  # benchmarks open many connections at once
SHUTDOWN_TIMEOUT_S: Final = 2.0  # in-flight requests get this long at stop; a test server must stop fast
CROSS_THREAD_TIMEOUT_S: Final = 10.0  # bound on waiting for the emulator's loop from another thread
THREAD_JOIN_TIMEOUT_S: Final = 10.0


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class AblyEmulator:
    """An Ably emulator (REST and realtime) on ``host:port`` (port 0 = pick a free one).

    ``async with AblyEmulator(keys=["app.key:secret"]) as ably: ... ably.url ...``. The inspection
    methods (messages, stats, inject_fault, clear_faults, reset, configure) are safe from any thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: Iterable[str] = (DEFAULT_KEY,),
        latency_ms: float = 0.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        channel_rate_limit: float = 0.0,
        dedupe_window_s: float = DEFAULT_DEDUPE_WINDOW_S,
        tokens: Iterable[str] = (),
        connection_state_ttl_s: float = DEFAULT_CONNECTION_STATE_TTL_S,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        batch_response: str = "legacy",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        # Monotonic seconds for the channel rate buckets, the dedupe window and fault durations: a test
        # may pass a clock it moves by hand, to measure pacing without sleeping.
        self.clock = clock
        self._requested_port = port
        self.config = EmulatorConfig(
            keys=tuple(keys),
            tokens=tuple(tokens),
            latency_ms=latency_ms,
            max_message_size=max_message_size,
            channel_rate_limit=channel_rate_limit,
            dedupe_window_s=dedupe_window_s,
            connection_state_ttl_s=connection_state_ttl_s,
            heartbeat_interval_s=heartbeat_interval_s,
            batch_response=batch_response,
        )
        # reset() returns to these, so a session-wide emulator shared by tests starts each test the same.
        self._initial_settings = self.config.public()
        self.store = Store(self.config, clock=clock)
        self.realtime = RealtimeHub(self.config, self.store)
        self.faults = FaultBook(clock=clock)
        self.stopping = False
        self._state = _State.UNOPENED
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refuse_task: asyncio.Task[None] | None = None
        self._refusing_until: float | None = None
        # Bumped by every refusal and by stop(), so a listener that was still starting closes itself.
        self._generation = 0
        self._serving_pending = False
        self._rest: RestApi | None = None
        self._control: ControlApi | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        if self._port is None:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL to use as the Ably REST endpoint, e.g. ``http://127.0.0.1:8081``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the port is taken."""
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"cannot start an emulator that is {self._state.value}")
        self._state = _State.OPENED
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        rest = self._rest = RestApi(self.config, self.store, self.faults)
        control = self._control = ControlApi(self)
        app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[cors_middleware, rest.middleware])
        rest.add_routes(app)
        self.realtime.add_routes(app)
        control.add_routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await self._runner.setup()
        try:
            sock = self._bind(self._requested_port)
        except OSError:
            await self.stop()
            raise
        self._port = sock.getsockname()[1]
        await self._serve(sock, self._generation)
        logger.info("ably emulator listening on %s", self.url)

    async def stop(self) -> None:
        """Stop listening, end connections (in-flight requests get SHUTDOWN_TIMEOUT_S). Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self.stopping = True
        self._generation += 1
        if self._rest is not None:
            self._rest.closing.set()
        if self._control is not None:
            self._control.close_streams()
        await self.realtime.close_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # we cancelled it; its own errors were already logged by _task_done
        if self._server is not None:
            await close_server(self._server)
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("ably emulator stopped")

    async def __aenter__(self) -> AblyEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _bind(self, port: int) -> socket.socket:
        # Binding and listening synchronously means connections queue in the backlog (instead of being
        # refused) from this instant, even before asyncio starts accepting them.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def _serve(self, sock: socket.socket, generation: int) -> None:
        assert self._loop is not None and self._runner is not None and self._runner.server is not None
        try:
            server = await self._loop.create_server(self._runner.server, sock=sock)
        finally:
            self._serving_pending = False
        if generation == self._generation:
            self._server = server
            return
        server.close()  # a refusal (or stop) came while this listener was starting...
        if self._state is _State.OPENED and self._refuse_task is None:
            self._listen_again()  # ...and that refusal has been ended already

    def _own(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("ably emulator background task failed", exc_info=task.exception())

    # -- refusing connections -----------------------------------------------------------------------

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the emulator's loop: directly when already there, else wait for it (bounded)."""
        loop = self._loop
        if loop is None or self._state is not _State.OPENED or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
            return

        async def call() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=CROSS_THREAD_TIMEOUT_S)

    def refuse_for(self, duration_s: float) -> None:
        """Stop listening and close every connection; listen again on the same port after ``duration_s``."""
        self._in_loop(self._refuse, duration_s)

    def _refuse(self, duration_s: float) -> None:
        self._generation += 1
        if self._server is not None:
            # Closes the listening socket now: new connections are refused. (Unlike stop(), no grace for
            # the sockets accepted last: a refusal must start at once; see emulators.net.close_server.)
            self._server.close()
            self._server = None
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                handler.force_close()
        if self._refuse_task is not None:
            self._refuse_task.cancel()
        self._refusing_until = time.monotonic() + duration_s
        self._refuse_task = self._own(self._listen_after(duration_s))
        logger.info("ably emulator refusing connections on port %s for %.1f s", self._port, duration_s)

    async def _listen_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._refuse_task = None
        self._listen_again()

    def _end_refusal(self) -> None:
        if self._refuse_task is not None:
            self._refuse_task.cancel()
            self._refuse_task = None
            self._listen_again()

    def _listen_again(self) -> None:
        self._refusing_until = None
        if self._server is not None or self._serving_pending or self._state is not _State.OPENED:
            return
        sock = self._bind(self.port)
        self._serving_pending = True
        self._own(self._serve(sock, self._generation))
        logger.info("ably emulator listening again on %s", self.url)

    # -- inspection and control (thread-safe) -------------------------------------------------------

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Delivered messages in arrival order: channel, id, name, data, encoding, clientId, extras,
        received_at (ms)."""
        return self.store.messages(channel)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, publish_requests, messages_delivered, duplicates_dropped, messages_rejected,
        rate_limited, rate_limited_by_channel, rate_limited_requests, faults_served, status_counts,
        requests_by_key, channels (messages per channel), and ``realtime``: open connections and attached
        connections per channel."""
        return {**self.store.stats(), "realtime": self.realtime.stats()}

    def inject_fault(self, **spec: Any) -> dict[str, Any]:
        """Activate a fault (same fields as ``POST /_emulator/faults``); returns its description.

        ``mode="refuse"`` takes effect before this returns. Raises ValueError for an invalid spec.
        """
        fault = parse_fault(spec, self.clock())
        if fault.mode == "refuse":
            self.refuse_for(fault.duration_s or DEFAULT_REFUSE_S)
        elif fault.mode == "disconnect":
            self.disconnect_realtime(fault.duration_s or DEFAULT_REFUSE_S)
        else:
            self.faults.add(fault)
        return fault.public()

    def disconnect_realtime(self, duration_s: float) -> None:
        """Drop every realtime connection and refuse new ones for ``duration_s``; REST keeps working."""
        self._in_loop(self.realtime.disconnect_all, duration_s)

    def active_faults(self) -> list[dict[str, Any]]:
        """The faults in force, plus a ``refuse`` entry while refusing."""
        active = [f.public() for f in self.faults.active()]
        until = self._refusing_until
        if until is not None:
            active.append({"mode": "refuse", "remaining_s": max(0.0, until - time.monotonic())})
        realtime_remaining = self.realtime.refusing_remaining_s()
        if realtime_remaining is not None:
            active.append({"mode": "disconnect", "remaining_s": realtime_remaining})
        return active

    def clear_faults(self) -> None:
        """Deactivate every fault and end a refusal now (listening again before this returns)."""
        self.faults.clear()
        self._in_loop(self._end_refusal)
        self._in_loop(self.realtime.end_refusal)

    def reset(self) -> None:
        """Forget messages, dedupe state, counters and faults; restore the settings given at construction."""
        self.clear_faults()
        self.config.update(self._initial_settings)
        self.store.reset()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings at runtime (latency_ms, max_message_size, channel_rate_limit, dedupe_window_s,
        keys, tokens, connection_state_ttl_s, heartbeat_interval_s, batch_response); returns the resulting
        settings. Raises ValueError, changing nothing, if invalid."""
        self.config.update(changes)
        return self.config.public()


@contextlib.contextmanager
def run_in_thread(**kwargs: Any) -> Iterator[AblyEmulator]:
    """Run an AblyEmulator (same arguments) on its own loop in a daemon thread, for synchronous code."""
    emulator = AblyEmulator(**kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ably-emulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(timeout=CROSS_THREAD_TIMEOUT_S)
        yield emulator
    finally:
        try:
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout=CROSS_THREAD_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=THREAD_JOIN_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
