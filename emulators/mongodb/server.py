"""The asyncio TCP server, ``MongoEmulator`` (async context manager) and ``run_in_thread``.

Each connection is served by one task that reads a message, awaits its reply and writes it, like a
mongod connection thread: drivers never pipeline requests on one socket. Long waits (awaitable hello,
awaitData getMore) only park that task. Shutdown order: stop accepting, abort sockets, cancel the
connection tasks and wait for them (bounded).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..net import close_server
from . import commands as _commands  # registers the command handlers
from .engine import Config, Connection, Engine
from .errors import CloseConnection
from .ttl import DEFAULT_SLEEP_S as DEFAULT_TTL_SLEEP_S
from .ttl import run_ttl_monitor
from .wire import (
    HEADER_SIZE,
    OP_QUERY,
    ProtocolError,
    decode_request,
    encode_document,
    encode_op_msg,
    encode_op_reply,
    parse_header,
)

log = logging.getLogger(__name__)
del _commands

# Bounded waits for lifecycle steps (a stuck handler must not hang a test's teardown).
SHUTDOWN_TIMEOUT_S = 5.0
THREAD_START_TIMEOUT_S = 10.0
THREAD_CALL_TIMEOUT_S = 30.0


class State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class MongoEmulator:
    """A one-member replica set (or standalone) speaking the MongoDB wire protocol.

    ``async with MongoEmulator(port=0) as server: server.uri``
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        replset: str = "rs0",
        server_version: str = "7.0.0",
        oplog_size: int = 1_000_000,
        standalone: bool = False,
        ttl_monitor_sleep_s: float = DEFAULT_TTL_SLEEP_S,
    ) -> None:
        self.config = Config(host, port, replset, server_version, oplog_size, standalone, ttl_monitor_sleep_s)
        self.engine = Engine(self.config)
        self.engine.drop_connections = self.drop_all_connections
        self._server: asyncio.Server | None = None
        self._state = State.UNOPENED
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: dict[Connection, asyncio.StreamWriter] = {}
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.engine.connections_snapshot = lambda: list(self._connections)

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def uri(self) -> str:
        base = f"mongodb://{self.config.address}/"
        if self.config.standalone:
            return base + "?directConnection=true"
        return f"{base}?replicaSet={self.config.replset}"

    async def start(self) -> None:
        if self._state is not State.UNOPENED:
            raise RuntimeError(f"cannot start an emulator that is {self._state.value}")
        self._server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, limit=1 << 20
        )
        sock = self._server.sockets[0]
        self.config.port = sock.getsockname()[1]
        self.engine.address = self.config.address
        self._state = State.OPENED
        monitor = asyncio.create_task(
            run_ttl_monitor(self.engine, self.config.ttl_monitor_sleep_s), name="mongo-ttl-monitor"
        )
        self._tasks.add(monitor)
        monitor.add_done_callback(self._tasks.discard)
        log.info("mongodb emulator listening on %s", self.uri)

    async def aclose(self) -> None:
        """Stop accepting, close every connection, wait for handlers (bounded). Idempotent."""
        if self._state is not State.OPENED:
            self._state = State.CLOSED
            return
        self._state = State.CLOSED
        assert self._server is not None
        await close_server(self._server)  # handlers of the last accepted sockets see CLOSED and abort
        self.drop_all_connections()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_TIMEOUT_S)
        log.info("mongodb emulator on port %s stopped", self.config.port)

    async def __aenter__(self) -> MongoEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- test hooks -----------------------------------------------------------------------------------
    def drop_all_connections(self) -> int:
        """Abort every client socket (drivers see a network error and reconnect)."""
        writers = list(self._connections.items())
        for conn, writer in writers:
            conn.closed = True
            writer.transport.abort()
        return len(writers)

    def step_down(self, seconds: float) -> None:
        """Writes fail with NotWritablePrimary (10107, with topologyVersion) for ``seconds``."""
        self.engine.topology.step_down(seconds)

    def reset(self) -> None:
        """Drop all data, the oplog, cursors and failpoints."""
        self.engine.reset()

    # -- connections ----------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._state is not State.OPENED:  # accepted while shutting down
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peername")
        conn = Connection(next(self._conn_ids), f"{peer[0]}:{peer[1]}" if peer else "unknown")
        self._connections[conn] = writer
        # The connection's work runs in a task this server owns, so shutdown can cancel it without
        # the streams machinery (which owns the callback task) seeing a cancelled task.
        task = asyncio.create_task(self._loop(conn, reader, writer), name=f"mongo-conn-{conn.conn_id}")
        self._tasks.add(task)
        try:
            await asyncio.wait({task})
            if not task.cancelled():
                self._report(conn, task.exception())
        finally:
            self._connections.pop(conn, None)
            self._tasks.discard(task)
            writer.transport.abort()

    @staticmethod
    def _report(conn: Connection, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, asyncio.IncompleteReadError | ConnectionError | CloseConnection):
            return
        if isinstance(exc, ProtocolError):
            log.warning("closing connection %s: %s", conn.conn_id, exc)
        else:
            log.error("connection %s failed: %r", conn.conn_id, exc, exc_info=exc)

    async def _loop(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not conn.closed:
            header = await reader.readexactly(HEADER_SIZE)
            length, request_id, _, op_code = parse_header(header)
            body = await reader.readexactly(length - HEADER_SIZE)
            request = decode_request(request_id, op_code, body)
            conn.extra["last_request_size"] = length
            default_db = request.collection.partition(".")[0] if request.collection else "admin"
            if request.error is not None:  # BSON mongod refuses: an error reply, the connection stays
                reply = self.engine.decorate(self.engine.error_reply(request.error))
            else:
                reply = await self.engine.dispatch(conn, request.command, default_db)
            if request.more_to_come:
                continue
            payload = encode_document(reply)
            if op_code == OP_QUERY:
                frame = encode_op_reply(next(self._request_ids), request_id, payload)
            else:
                frame = encode_op_msg(next(self._request_ids), request_id, payload)
            writer.write(frame)
            await writer.drain()
            if conn.extra.pop("drop_all_after_reply", False):
                self.drop_all_connections()


class ThreadedEmulator:
    """An emulator running on its own event loop in a daemon thread (see ``run_in_thread``)."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.server: MongoEmulator | None = None

    @property
    def uri(self) -> str:
        assert self.server is not None
        return self.server.uri

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def host(self) -> str:
        assert self.server is not None
        return self.server.host

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mongodb-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(THREAD_START_TIMEOUT_S):
            raise RuntimeError("mongodb emulator thread did not start in time")
        if self._error is not None:
            raise RuntimeError("mongodb emulator failed to start") from self._error

    def _run(self) -> None:
        # The thread's top level: a failure is handed to the owner (start() raises it, stop() logs
        # it) rather than re-raised here, where it would only reach threading.excepthook.
        try:
            asyncio.run(self._main())
        except Exception as exc:
            self._error = exc
            log.error("mongodb emulator thread failed: %r", exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with MongoEmulator(**self._kwargs) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the emulator's loop (awaiting a coroutine result); thread-safe."""
        assert self._loop is not None

        async def invoke() -> Any:
            result = fn if asyncio.iscoroutine(fn) else fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        return future.result(THREAD_CALL_TIMEOUT_S)

    def drop_all_connections(self) -> int:
        assert self.server is not None
        return int(self.call(self.server.drop_all_connections))

    def step_down(self, seconds: float) -> None:
        assert self.server is not None
        self.call(self.server.step_down, seconds)

    def reset(self) -> None:
        assert self.server is not None
        self.call(self.server.reset)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(SHUTDOWN_TIMEOUT_S + 1)


@contextlib.contextmanager
def run_in_thread(**kwargs: Any) -> Iterator[ThreadedEmulator]:
    """``with run_in_thread(port=0) as server: server.uri`` — for sync clients and other loops."""
    emulator = ThreadedEmulator(**kwargs)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
