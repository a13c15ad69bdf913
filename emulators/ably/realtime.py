"""The realtime side: WebSocket connections speaking Ably's protocol (JSON) as ably-js 2.x does.

A client connects to ``ws://host:port/?key=...&v=...&format=json&heartbeats=...``; it gets CONNECTED with
``connectionDetails``, attaches channels (ATTACHED carries the attach serial that ``history({untilAttach:
true})`` sends back as ``from_serial``), and receives every message published to an attached channel —
over REST, batch publish or realtime — as a MESSAGE with the channel serial after it. Continuity across
reconnects works as in protocol v2+: the client re-attaches with the last ``channelSerial`` it saw and, if
that serial is still known, gets ATTACHED with the RESUMED flag followed by what it missed; a connection
key can be resumed within ``connection_state_ttl_s``. What is not supported (msgpack, presence,
annotations, objects) is refused with an Ably error the client can read. See README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import WSMsgType, web

from emulators.ably.config import EmulatorConfig
from emulators.ably.errors import (
    AUTH_FAILED,
    BAD_REQUEST,
    INVALID_BODY,
    TOKEN_INVALID,
    AblyHttpError,
    error_info,
    error_response,
)
from emulators.ably.messages import normalize_unit_for_store, unit_id, validate_channel
from emulators.ably.protocol import (
    CONNECTION_EXPIRED,
    DEFAULT_MODES,
    FLAG_RESUMED,
    MODES_MASK,
    Action,
    channel_serial,
    encode,
    msgpack_error_frame,
    parse_channel_serial,
)
from emulators.ably.rest import REALTIME_PATH, history_view
from emulators.ably.store import Store

logger = logging.getLogger(__name__)

OUTBOX_MAX: Final = 10_000  # frames queued for one client; a client this far behind is disconnected
CLOSE_TIMEOUT_S: Final = 2.0  # at shutdown, how long a client gets to acknowledge the close
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
UNSUPPORTED_ACTIONS: Final = {
    Action.PRESENCE: "presence",
    Action.ANNOTATION: "annotations",
    Action.OBJECT: "objects",
    Action.OBJECT_SYNC: "objects",
}


@dataclass
class _Record:
    """What survives a dropped connection so that the client can resume it: its id, until ``expires_at``."""

    connection_id: str
    expires_at: float | None  # None while a socket is open


class Connection:
    """One open WebSocket: its identity, attached channels and an ordered outbox."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, connection_id: str, key: str, query: Any
    ) -> None:
        self.request = request
        self.ws = ws
        self.id = connection_id
        self.key = key
        self.echo = query.get("echo") != "false"
        # Browsers cannot see WebSocket pings: there ably-js asks for protocol HEARTBEATs (heartbeats=true).
        self.protocol_heartbeats = query.get("heartbeats") == "true"
        self.client_id: str | None = query.get("clientId")
        self.channels: set[str] = set()
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(maxsize=OUTBOX_MAX)

    def send(self, frame: dict[str, Any]) -> bool:
        """Queue a frame; False when the outbox is full (the caller drops this client)."""
        try:
            self.outbox.put_nowait(encode(frame))
        except asyncio.QueueFull:
            return False
        return True

    async def write_loop(self, heartbeat_interval_s: float) -> None:
        """Send queued frames in order; when idle for ``heartbeat_interval_s``, send a heartbeat."""
        while True:
            try:
                frame = await asyncio.wait_for(self.outbox.get(), heartbeat_interval_s)
            except TimeoutError:
                if self.protocol_heartbeats:
                    await self.ws.send_str(encode({"action": Action.HEARTBEAT}))
                else:
                    await self.ws.ping()
                continue
            if frame is None:
                return
            await self.ws.send_str(frame)

    def abort(self) -> None:
        """Drop the connection without a closing handshake, as a network failure would."""
        self.request.protocol.force_close()


class RealtimeHub:
    """Every realtime connection, who is attached where, and fan-out of delivered messages."""

    def __init__(self, config: EmulatorConfig, store: Store) -> None:
        self._config = config
        self._store = store
        self._open: set[Connection] = set()
        self._subscribers: dict[str, set[Connection]] = {}
        self._records: dict[str, _Record] = {}  # connection key → record
        self._refusing_until: float | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        store.add_delivery_listener(self._deliver)

    def add_routes(self, app: web.Application) -> None:
        """Register the realtime endpoint (``GET /`` with a WebSocket upgrade)."""
        app.router.add_get(REALTIME_PATH, self.handle)

    # -- control ------------------------------------------------------------------------------------

    def disconnect_all(self, duration_s: float) -> None:
        """Drop every connection abruptly and refuse new ones for ``duration_s`` (REST is unaffected)."""
        self._refusing_until = time.monotonic() + duration_s
        for conn in list(self._open):
            conn.abort()
        logger.info("realtime: dropped %d connections; refusing for %.1f s", len(self._open), duration_s)

    def end_refusal(self) -> None:
        """Accept realtime connections again now."""
        self._refusing_until = None

    def refusing_remaining_s(self) -> float | None:
        until = self._refusing_until
        if until is None:
            return None
        remaining = until - time.monotonic()
        if remaining <= 0:
            self._refusing_until = None
            return None
        return remaining

    async def close_all(self) -> None:
        """At shutdown: close every connection (going away), each bounded by CLOSE_TIMEOUT_S."""
        self._closing = True
        for conn in list(self._open):
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(
                    conn.ws.close(code=1001, message=b"server shutting down"), CLOSE_TIMEOUT_S
                )

    def stats(self) -> dict[str, Any]:
        """Open connections and attached connections per channel."""
        return {
            "connections": len(self._open),
            # A copy first: stats() may run on another thread while the loop attaches.
            "attached": {name: len(conns) for name, conns in dict(self._subscribers).items() if conns},
        }

    # -- connecting ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /`` with a WebSocket upgrade: one realtime connection, until either side closes it."""
        if self._closing or self.refusing_remaining_s() is not None:
            request.protocol.force_close()  # like an unreachable host: no handshake, no answer
            return web.Response(status=503)
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=MAX_FRAME_BYTES)
        if not ws.can_prepare(request).ok:
            return error_response(BAD_REQUEST, 400, "the realtime endpoint expects a WebSocket upgrade")
        await ws.prepare(request)
        query = request.query
        problem = self._connect_problem(query)
        if problem is not None:
            if query.get("format") == "msgpack":
                await ws.send_bytes(msgpack_error_frame(*problem))
            else:
                await ws.send_str(encode({"action": Action.ERROR, "error": error_info(*problem)}))
            await ws.close()
            return ws
        conn = self._open_connection(request, ws, query)
        writer = asyncio.create_task(conn.write_loop(self._config.heartbeat_interval_s))
        try:
            await self._read_loop(conn)
        finally:
            await self._finish(conn, writer)
        return ws

    def _connect_problem(self, query: Any) -> tuple[int, int, str] | None:
        """Why a connection request is refused (code, status, message), or None."""
        if query.get("format", "json") != "json":
            return (
                BAD_REQUEST,
                400,
                "the Ably emulator speaks the JSON protocol only; set useBinaryProtocol: false",
            )
        if not query.get("v"):
            return BAD_REQUEST, 400, "protocol version (v) required"
        key, token = query.get("key"), query.get("access_token")
        if key is not None:
            name, _, secret = key.partition(":")
            expected = self._config.secrets_by_key_name.get(name)
            if expected is None or secret != expected:
                return AUTH_FAILED, 401, f"invalid key {name!r}"
            return None
        if token is not None:
            if token not in self._config.tokens:
                return TOKEN_INVALID, 401, "invalid or unknown token"
            return None
        return AUTH_FAILED, 401, "no credentials: connect with key=... or access_token=..."

    def _open_connection(self, request: web.Request, ws: web.WebSocketResponse, query: Any) -> Connection:
        self._purge_records()
        resume_key = query.get("resume") or query.get("recover")
        record = self._records.get(resume_key) if resume_key else None
        error = None
        if record is not None:
            connection_id, key = record.connection_id, resume_key
            for old in [c for c in self._open if c.key == key]:
                old.abort()  # the client gave up on that socket; it must not receive anything more
        else:
            connection_id = secrets.token_hex(5)
            key = f"{connection_id}!{secrets.token_hex(8)}"
            if resume_key:
                error = error_info(
                    CONNECTION_EXPIRED, 400, "unable to resume the connection: unknown or expired key"
                )
        self._records[key] = _Record(connection_id, None)
        conn = Connection(request, ws, connection_id, key, query)
        self._open.add(conn)
        details: dict[str, Any] = {
            "connectionKey": key,
            "maxMessageSize": self._config.max_message_size,
            "maxFrameSize": MAX_FRAME_BYTES,
            "maxInboundRate": 0,
            "serverId": "ably-emulator",
            "connectionStateTtl": int(self._config.connection_state_ttl_s * 1000),
            "maxIdleInterval": int(self._config.heartbeat_interval_s * 1000),
        }
        if conn.client_id:
            details["clientId"] = conn.client_id
        connected: dict[str, Any] = {
            "action": Action.CONNECTED,
            "connectionId": connection_id,
            "connectionDetails": details,
        }
        if error is not None:
            connected["error"] = error
        conn.send(connected)
        logger.debug("realtime: connection %s open (resumed: %s)", connection_id, record is not None)
        return conn

    def _purge_records(self) -> None:
        now = time.monotonic()
        expired = [k for k, r in self._records.items() if r.expires_at is not None and r.expires_at <= now]
        for key in expired:
            del self._records[key]

    async def _finish(self, conn: Connection, writer: asyncio.Task[None]) -> None:
        self._open.discard(conn)
        for name in conn.channels:
            self._subscribers.get(name, set()).discard(conn)
        record = self._records.get(conn.key)
        if record is not None and record.expires_at is None:
            record.expires_at = time.monotonic() + self._config.connection_state_ttl_s
        # Let the writer flush what is queued (a CLOSED, an ERROR), boundedly, then close the socket.
        with contextlib.suppress(asyncio.QueueFull):
            conn.outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(writer), CLOSE_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass  # a dead socket: nothing more can be sent
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer  # we cancelled it (or it already ended)
        if not conn.ws.closed:
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(conn.ws.close(), CLOSE_TIMEOUT_S)

    # -- reading ------------------------------------------------------------------------------------

    async def _read_loop(self, conn: Connection) -> None:
        async for frame in conn.ws:
            if frame.type is WSMsgType.TEXT:
                try:
                    message = orjson.loads(frame.data)
                except orjson.JSONDecodeError:
                    message = None
                if not isinstance(message, dict) or not isinstance(message.get("action"), int):
                    self._fatal(conn, INVALID_BODY, "a protocol message must be a JSON object with an action")
                    return
                if not self._dispatch(conn, message):
                    return
            elif frame.type is WSMsgType.BINARY:
                self._fatal(conn, BAD_REQUEST, "binary (msgpack) frames are not supported; use JSON")
                return
            else:
                return

    @staticmethod
    def _fatal(conn: Connection, code: int, message: str) -> None:
        """A connection-level ERROR: ably-js fails the connection with it (the socket closes after)."""
        conn.send({"action": Action.ERROR, "error": error_info(code, code // 100, message)})

    def _dispatch(self, conn: Connection, message: dict[str, Any]) -> bool:
        """Handle one client frame; False when the connection is over."""
        action = message["action"]
        if action == Action.HEARTBEAT:
            conn.send({"action": Action.HEARTBEAT, **({"id": message["id"]} if "id" in message else {})})
        elif action == Action.ATTACH:
            self._attach(conn, message)
        elif action == Action.DETACH:
            self._detach(conn, message)
        elif action == Action.MESSAGE:
            self._publish(conn, message)
        elif action == Action.CLOSE:
            conn.send({"action": Action.CLOSED})
            self._records.pop(conn.key, None)
            return False
        elif action == Action.DISCONNECT:
            return False
        elif action in UNSUPPORTED_ACTIONS:
            feature = UNSUPPORTED_ACTIONS[Action(action)]
            conn.send(
                {
                    "action": Action.NACK,
                    "msgSerial": message.get("msgSerial", 0),
                    "count": 1,
                    "error": error_info(BAD_REQUEST, 400, f"the Ably emulator does not support {feature}"),
                }
            )
        else:  # SYNC (presence sync), AUTH (token renewal), ACTIVATE: nothing to do without presence/tokens
            logger.debug("realtime: ignoring action %s from %s", action, conn.id)
        return True

    # -- channels -----------------------------------------------------------------------------------

    def _attach(self, conn: Connection, message: dict[str, Any]) -> None:
        name = message.get("channel")
        try:
            if not isinstance(name, str):
                raise AblyHttpError(BAD_REQUEST, 400, "ATTACH without a channel")
            validate_channel(name)
        except AblyHttpError as exc:
            conn.send({"action": Action.ERROR, "channel": name, "error": exc.to_info()})
            return
        epoch = self._store.epoch
        history = self._store.history(name)
        current = len(history)
        modes = int(message.get("flags") or 0) & MODES_MASK or DEFAULT_MODES
        resume_from = parse_channel_serial(message.get("channelSerial"), epoch)
        resumed = resume_from is not None and resume_from <= current
        attached = {
            "action": Action.ATTACHED,
            "channel": name,
            "channelSerial": channel_serial(epoch, current),
            "flags": modes | (FLAG_RESUMED if resumed else 0),
        }
        # No await from here on: no publish can slip between the attach point and the subscription.
        conn.send(attached)
        if resumed and resume_from is not None:
            for position, stored in enumerate(history[resume_from:], resume_from + 1):
                conn.send(self._message_frame(name, position, [stored], None))
        conn.channels.add(name)
        self._subscribers.setdefault(name, set()).add(conn)

    def _detach(self, conn: Connection, message: dict[str, Any]) -> None:
        name = message.get("channel")
        if isinstance(name, str):
            conn.channels.discard(name)
            self._subscribers.get(name, set()).discard(conn)
        conn.send({"action": Action.DETACHED, "channel": name})

    def _publish(self, conn: Connection, message: dict[str, Any]) -> None:
        msg_serial = message.get("msgSerial", 0)
        name = message.get("channel")
        raw = message.get("messages")
        try:
            if not isinstance(name, str):
                raise AblyHttpError(BAD_REQUEST, 400, "MESSAGE without a channel")
            validate_channel(name)
            if not isinstance(raw, list) or not raw:
                raise AblyHttpError(INVALID_BODY, 400, "MESSAGE without messages")
            messages, uid = normalize_unit_for_store(raw, self._config.max_message_size)
            if uid is None:  # no client-supplied ids (the id rule allows all or none)
                for idx, stored in enumerate(messages):
                    stored["id"] = f"{conn.id}:{msg_serial}:{idx}"  # Ably's id for a realtime publish
                uid = unit_id(messages)
            self._store.publish(name, messages, uid, origin=conn.id)
        except AblyHttpError as exc:
            conn.send({"action": Action.NACK, "msgSerial": msg_serial, "count": 1, "error": exc.to_info()})
            return
        conn.send({"action": Action.ACK, "msgSerial": msg_serial, "count": 1})

    # -- delivering ---------------------------------------------------------------------------------

    def _message_frame(
        self, channel: str, first_position: int, messages: list[dict[str, Any]], origin: str | None
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "action": Action.MESSAGE,
            "channel": channel,
            "channelSerial": channel_serial(self._store.epoch, first_position + len(messages) - 1),
            "timestamp": messages[0]["received_at"],
            "messages": [history_view(m) for m in messages],
        }
        if origin is not None:
            frame["connectionId"] = origin
        return frame

    def _deliver(
        self, channel: str, first_position: int, messages: list[dict[str, Any]], origin: str | None
    ) -> None:
        """Store listener (runs on the emulator's loop, inside the publish): fan out to attached clients."""
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        frame = self._message_frame(channel, first_position, messages, origin)
        for conn in list(subscribers):
            if origin == conn.id and not conn.echo:
                continue
            if not conn.send(frame):
                logger.warning(
                    "realtime: connection %s is %d frames behind; dropping it", conn.id, OUTBOX_MAX
                )
                subscribers.discard(conn)
                conn.abort()
