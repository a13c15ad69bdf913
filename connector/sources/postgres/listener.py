"""LISTEN on `ably_adbc`: each notification (Ably's trigger fires once per INSERT statement) wakes the
reader at once. Losing the listener is not fatal: the reader polls every POLL_INTERVAL_MS anyway, and the
listener reconnects with a growing delay (a PostgreSQL restart, a terminated backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from psycopg import sql

from connector.errors import DatabaseUnavailable
from connector.sources.postgres.db import Connection, close_quietly, connect, mapped_errors
from connector.sources.postgres.names import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_INITIAL_S = 0.2
RECONNECT_BACKOFF_MAX_S = 5.0


@dataclass(slots=True)
class ListenerStats:
    notifications: int = 0
    reconnects: int = 0
    listening: bool = False


class NotifyListener:
    """Sets `wake` on every notification; `run()` returns only when cancelled."""

    def __init__(self, conninfo: str, wake: asyncio.Event, channel: str = NOTIFY_CHANNEL) -> None:
        self._conninfo = conninfo
        self._wake = wake
        self._channel = channel
        self._conn: Connection | None = None
        self.stats = ListenerStats()

    @property
    def backend_pid(self) -> int | None:
        """The listening session's server pid (tests terminate it to lose notifications)."""
        return self._conn.info.backend_pid if self._conn is not None else None

    async def run(self) -> None:
        delay = RECONNECT_BACKOFF_INITIAL_S
        try:
            while True:
                try:
                    await self._listen()
                except DatabaseUnavailable as exc:
                    if self.stats.listening:
                        delay = RECONNECT_BACKOFF_INITIAL_S  # it had worked: start the backoff again
                    log.warning(
                        "LISTEN %s lost (polling meanwhile), reconnecting in %.1fs: %s",
                        self._channel,
                        delay,
                        exc,
                    )
                self.stats.listening = False
                self.stats.reconnects += 1
                self._wake.set()  # anything notified while we were away is found by one read
                await asyncio.sleep(delay)
                delay = min(RECONNECT_BACKOFF_MAX_S, delay * 2)
        finally:
            self.stats.listening = False
            await close_quietly(self._conn)
            self._conn = None

    async def _listen(self) -> None:
        await close_quietly(self._conn)
        self._conn = None
        self._conn = await connect(self._conninfo, purpose="listen")
        with mapped_errors(f"listening on {self._channel!r}"):
            await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.stats.listening = True
            self._wake.set()  # rows inserted before LISTEN took effect
            async for _ in self._conn.notifies():
                self.stats.notifications += 1
                self._wake.set()
        raise DatabaseUnavailable("the notification stream ended")

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await close_quietly(self._conn)
