"""The PostgreSQL lease: a session-level advisory lock, with membership in Ably's `nodes` table.

`connector.leadership.LeaseStore` for the outbox. Leadership cannot split: PostgreSQL grants
`pg_try_advisory_lock(key)` to one session at a time and holds it until that session unlocks or ends. The
key is derived from CONNECTOR_ID (default: the outbox table), so every instance of one connector competes
for the same lock. The lock lives on a dedicated session that does nothing else:

- every acquire attempt (a standby's poll) and every renewal upserts this instance's `nodes` row with
  `expiry = now() + LEASE_TTL_S` (the database's clock, UTC) and deletes expired rows;
- the session runs with `idle_session_timeout = LEASE_TTL_S`: if the process freezes or the network goes,
  PostgreSQL ends the session within the TTL and the lock passes to a standby. The leader's monotonic
  deadline (connector/leadership.py) falls before that;
- a renewal that cannot reach the database closes the session, which lets the lock go at once: the
  lease is lost (LeadershipLost), whatever the deadline says;
- on taking the lock the leader bumps `epoch` in the watermark row; every position write is conditional
  on it (see store.py), so a deposed leader's write matches nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from psycopg import sql

from connector.errors import DatabaseUnavailable, LeadershipLost, LeaseStoreError
from connector.leadership import LeaseInfo
from connector.sources.postgres.db import Connection, close_quietly, connect, mapped_errors
from connector.sources.postgres.names import OutboxNames

log = logging.getLogger(__name__)

#: Namespace of the advisory lock key, so our lock never collides with an application's.
LOCK_PREFIX: Final = "livesync-connector:"


class PostgresLeaseStore:
    """The advisory lock and the `nodes` heartbeat, on one dedicated session."""

    def __init__(self, conninfo: str, names: OutboxNames, *, connector_id: str, ttl_s: float) -> None:
        self._conninfo = conninfo
        self._names = names
        self._key = LOCK_PREFIX + connector_id
        self._ttl_s = ttl_s
        self._conn: Connection | None = None
        self._locked = False
        self._owner = ""
        self.heartbeats = 0
        self.last_error: str | None = None
        nodes = names.nodes.sql
        self._beat = sql.SQL(
            "INSERT INTO {nodes} (id, expiry) "
            "VALUES (%(id)s, timezone('UTC', now()) + %(ttl)s * interval '1 second') "
            "ON CONFLICT (id) DO UPDATE SET expiry = EXCLUDED.expiry"
        ).format(nodes=nodes)
        self._expire = sql.SQL("DELETE FROM {} WHERE expiry < timezone('UTC', now())").format(nodes)
        self._leave = sql.SQL("DELETE FROM {} WHERE id = %s").format(nodes)
        self._bump = sql.SQL(
            "UPDATE {} SET epoch = epoch + 1, leader = %s, updated_at = now() RETURNING epoch"
        ).format(names.watermark.sql)
        self._read = sql.SQL("SELECT leader, epoch FROM {}").format(names.watermark.sql)

    async def acquire(self, owner: str, ttl_s: float) -> int | None:
        async with self._session("taking the outbox lock") as conn:
            await self._heartbeat(conn, owner, ttl_s)
            if self._locked:  # stepped down since: let go before competing again (locks nest)
                await conn.execute("SELECT pg_advisory_unlock_all()")
                self._locked = False
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [self._key])
            row = await cur.fetchone()
            if not (row and row[0]):
                return None
            self._locked = True
            cur = await conn.execute(self._bump, [owner])
            bumped = await cur.fetchone()
        if bumped is None:
            raise LeaseStoreError(f"the watermark row of {self._names.outbox.text} is missing")
        return int(str(bumped[0]))

    async def renew(self, owner: str, epoch: int, ttl_s: float) -> bool:
        if not self._locked or self._conn is None or self._conn.closed:
            raise LeadershipLost("lease lost: the session holding the outbox lock ended")
        try:
            async with self._session("heartbeating in the nodes table") as conn:
                await self._heartbeat(conn, owner, ttl_s)
        except LeaseStoreError as exc:  # the session is closed: the lock is gone with it
            raise LeadershipLost(f"lease lost: the session holding the outbox lock ended: {exc}") from exc
        return True

    async def release(self, owner: str, epoch: int) -> None:
        if not self._locked:
            return
        self._locked = False
        if self._conn is not None and not self._conn.closed:
            async with self._session("releasing the outbox lock") as conn:
                await conn.execute("SELECT pg_advisory_unlock_all()")

    async def read(self) -> LeaseInfo | None:
        async with self._session("reading the watermark row") as conn:
            cur = await conn.execute(self._read)
            row = await cur.fetchone()
        if row is None or not row[0]:
            return None
        return LeaseInfo(owner=str(row[0]), epoch=int(str(row[1])), expires_at=None)

    async def close(self) -> None:
        """Leave the nodes table (and so unlock: the session ends)."""
        conn, self._conn = self._conn, None
        self._locked = False
        if conn is None or conn.closed:
            return
        try:
            with mapped_errors("leaving the nodes table"):
                await asyncio.wait_for(conn.execute(self._leave, [self._owner]), self._ttl_s / 2)
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning("could not leave the nodes table cleanly: %s", exc or "timed out")
        await close_quietly(conn)

    # -- helpers -------------------------------------------------------------------------------------

    async def _heartbeat(self, conn: Connection, owner: str, ttl_s: float) -> None:
        self._owner = owner
        await conn.execute(self._beat, {"id": owner, "ttl": ttl_s})
        await conn.execute(self._expire)
        self.heartbeats += 1

    @asynccontextmanager
    async def _session(self, doing: str) -> AsyncIterator[Connection]:
        """The lock's session (opened on demand), each use bounded by half the TTL. On any failure the
        session is closed (and with it the lock) and LeaseStoreError raised."""
        try:
            with mapped_errors(doing):
                if self._conn is None or self._conn.closed:
                    self._locked = False
                    self._conn = await connect(self._conninfo, purpose="leadership")
                    # Not on PostgreSQL < 14 (no idle_session_timeout): then a frozen leader's lock lasts
                    # until TCP notices, and standbys wait longer. Never a split: the lock is exclusive.
                    ms = int(self._ttl_s * 1000)
                    await self._conn.execute(sql.SQL("SET idle_session_timeout = {}").format(sql.Literal(ms)))
                async with asyncio.timeout(self._ttl_s / 2):
                    yield self._conn
        except (DatabaseUnavailable, TimeoutError) as exc:
            self.last_error = str(exc) or f"timed out {doing}"
            await self._disconnect()
            raise LeaseStoreError(f"{doing}: {self.last_error}") from exc
        self.last_error = None

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._locked = False
        if conn is not None:
            await close_quietly(conn)
