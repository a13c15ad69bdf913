"""Health, readiness and metrics over HTTP, for probes and Prometheus.

`/healthz` answers while the event loop runs (liveness). `/readyz` is honest: 200 only while the change
stream is open, Ably is answering and checkpoint writes succeed; otherwise 503 with the reasons, so an
orchestrator or a human sees *why*. `/metrics` is the Prometheus text format.

Three GET endpoints need no web framework: the server is asyncio's, and HTTP/1.1 (parsing, keep-alive,
framing) is h11's, which httpx already depends on. A framework cost a tenth of a second of start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import h11
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from connector.errors import FatalError

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, dict[str, Any]]]
Reply = tuple[int, str, bytes]

#: A connection may wait this long for its next request (Prometheus keeps its connection between scrapes).
KEEPALIVE_TIMEOUT_S: Final = 75.0
#: A request line and headers larger than this are refused (431); a body is read and ignored.
MAX_REQUEST_BYTES: Final = 16 * 1024
READ_CHUNK: Final = 4096
CLOSE_TIMEOUT_S: Final = 2.0
JSON: Final = "application/json"
ALLOWED_METHODS: Final = (b"GET", b"HEAD")


async def serve_health(port: int, readiness: Readiness, registry: CollectorRegistry) -> HealthServer | None:
    """The health server on HTTP_PORT, started; None when HTTP_PORT is 0. A port that cannot be bound is
    fatal: an orchestrator's probes would fail without saying why."""
    if not port:
        return None
    server = HealthServer(port, readiness, registry)
    try:
        await server.start()
    except OSError as exc:
        raise FatalError(f"cannot serve health checks on HTTP_PORT {port}: {exc}") from exc
    return server


class HealthServer:
    """Serves the three endpoints on `port` (0 = an ephemeral port, for tests)."""

    def __init__(
        self, port: int, readiness: Readiness, registry: CollectorRegistry, host: str = "0.0.0.0"
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._routes: dict[bytes, Callable[[], Reply]] = {
            b"/healthz": self._healthz,
            b"/readyz": self._readyz,
            b"/metrics": self._metrics,
        }
        self.port: int | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("health server listening on %s:%s", self._host, self.port)

    async def aclose(self) -> None:
        """Stop serving and close open connections; closing twice is harmless."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=CLOSE_TIMEOUT_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT_S)
        await asyncio.sleep(0)  # aborted transports close their sockets in the loop's next round

    # -- one connection: requests in turn until the client closes, idles or errs -------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while await self._answer_one(conn, reader, writer):
                conn.start_next_cycle()
            writer.close()  # after what was written is sent
        except (ConnectionError, TimeoutError):
            writer.transport.abort()  # the client went away or idled out
        except BaseException:
            writer.transport.abort()  # the server is closing (cancelled), or a bug: logged by asyncio
            raise
        finally:
            self._connections.discard(task)

    async def _answer_one(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read one request and answer it; False when the connection is done."""
        try:
            request = await _next_request(conn, reader)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                _send(conn, writer, b"GET", (status, JSON, orjson.dumps({"error": str(exc)})))
                await _flush(writer)
            return False
        if request is None:
            return False
        _send(conn, writer, request.method, self._reply(request.method, request.target))
        await _flush(writer)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _reply(self, method: bytes, target: bytes) -> Reply:
        path = target.split(b"?", 1)[0]
        route = self._routes.get(path)
        if route is None:
            return 404, JSON, orjson.dumps({"error": f"no such endpoint: {path.decode('latin-1')}"})
        if method not in ALLOWED_METHODS:
            return 405, JSON, orjson.dumps({"error": f"{method.decode('latin-1')} is not allowed"})
        return route()

    def _healthz(self) -> Reply:
        return 200, JSON, orjson.dumps({"status": "ok"})

    def _readyz(self) -> Reply:
        ready, details = self._readiness()
        return (200 if ready else 503), JSON, orjson.dumps({"ready": ready, **details}, default=str)

    def _metrics(self) -> Reply:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next request with its body read (and ignored); None if the client closed first."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(KEEPALIVE_TIMEOUT_S):
                data = await reader.read(READ_CHUNK)
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # h11.Data: a request body, which no endpoint reads


async def _flush(writer: asyncio.StreamWriter) -> None:
    # A client that stops reading must not hold the connection forever.
    async with asyncio.timeout(KEEPALIVE_TIMEOUT_S):
        await writer.drain()


def _send(conn: h11.Connection, writer: asyncio.StreamWriter, method: bytes, reply: Reply) -> None:
    status, content_type, body = reply
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    if status == 405:
        headers.append(("allow", "GET, HEAD"))
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    if method != b"HEAD":
        writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
