"""One publisher per outbox: membership in Ably's `nodes` table and a session-level advisory lock.

Leadership cannot split: PostgreSQL grants `pg_try_advisory_lock(key)` to one session at a time, and
holds it until that session unlocks or ends. The key is derived from CONNECTOR_ID (default: the outbox
table), so every instance of one connector competes for the same lock. The lock lives on a dedicated
connection that does nothing else but heartbeat:

- every HEARTBEAT interval (LEASE_TTL_S / 4, at most 1 s) the instance upserts its `nodes` row with
  `expiry = now() + LEASE_TTL_S` (the database's clock, UTC) and deletes expired rows; a standby then
  tries the lock;
- the session runs with `idle_session_timeout = LEASE_TTL_S`: if the process freezes or the network
  goes, PostgreSQL ends the session within the TTL and the lock passes to a standby;
- the leader stops publishing when no heartbeat succeeded for LEASE_TTL_S / 2 by its own monotonic
  clock, before the server can have let the lock go (invariant 8);
- on taking the lock the leader bumps `epoch` in the watermark row; every position write is conditional
  on it (see store.py), so a deposed leader's write matches nothing. Ably's idempotent ids cover the
  moments when two instances might both be publishing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from psycopg import sql

from connector.errors import DatabaseUnavailable
from connector.sources.postgres.db import Connection, close_quietly, connect, mapped_errors
from connector.sources.postgres.names import OutboxNames

log = logging.getLogger(__name__)

#: The longest pause between heartbeats (and between a standby's attempts at the lock): a takeover after
#: a leader dies takes at most about this long, plus the time PostgreSQL needs to notice the session died.
HEARTBEAT_MAX_S: Final = 1.0
#: Namespace of the advisory lock key, so our lock never collides with an application's.
LOCK_PREFIX: Final = "livesync-connector:"

Role = Literal["standby", "leader"]


@dataclass(slots=True)
class LeadershipStats:
    role: Role = "standby"
    epoch: int = 0
    leader_changes: int = 0
    heartbeats: int = 0
    connected: bool = False
    last_error: str | None = None


class Leadership:
    def __init__(
        self,
        conninfo: str,
        names: OutboxNames,
        *,
        instance_id: str,
        connector_id: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conninfo = conninfo
        self._names = names
        self.instance_id = instance_id
        self._key = LOCK_PREFIX + connector_id
        self.ttl_s = ttl_s
        self.interval_s = min(HEARTBEAT_MAX_S, ttl_s / 4)
        self._clock = clock
        self._conn: Connection | None = None
        self._last_ok = float("-inf")
        self.stats = LeadershipStats()
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

    @property
    def is_leader(self) -> bool:
        return self.stats.role == "leader"

    def lease_valid(self) -> bool:
        """Leader, with a heartbeat within half the TTL (so the server cannot have released the lock)."""
        return self.is_leader and self._clock() - self._last_ok < self.ttl_s / 2

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._conninfo, purpose="leadership")
            self.stats.connected = True
            with mapped_errors("configuring the leadership session"):
                # Not on PostgreSQL < 14 (no idle_session_timeout): then a frozen leader's lock lasts
                # until TCP notices, and standbys wait longer. Never a split: the lock is still exclusive.
                ms = int(self.ttl_s * 1000)
                await self._conn.execute(sql.SQL("SET idle_session_timeout = {}").format(sql.Literal(ms)))
        return self._conn

    async def beat(self) -> None:
        """Heartbeat; a standby also tries the lock. Raises DatabaseUnavailable (the caller steps down)."""
        try:
            conn = await self._connection()
            with mapped_errors("heartbeating in the nodes table"):
                await conn.execute(self._beat, {"id": self.instance_id, "ttl": self.ttl_s})
                await conn.execute(self._expire)
            self._last_ok = self._clock()
            self.stats.heartbeats += 1
            if not self.is_leader:
                await self._try_acquire(conn)
        except DatabaseUnavailable as exc:
            self.stats.last_error = str(exc)
            await self.disconnect()
            raise

    async def _try_acquire(self, conn: Connection) -> None:
        with mapped_errors("taking the outbox lock"):
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [self._key])
            row = await cur.fetchone()
            if not (row and row[0]):
                return
            cur = await conn.execute(self._bump, [self.instance_id])
            bumped = await cur.fetchone()
        if bumped is None:
            raise DatabaseUnavailable(f"the watermark row of {self._names.outbox.text} is missing")
        self.stats.epoch = int(str(bumped[0]))
        self.stats.role = "leader"
        self.stats.leader_changes += 1
        log.info(
            "leader of %s (epoch %d, instance %s)",
            self._names.outbox.text,
            self.stats.epoch,
            self.instance_id,
        )

    async def step_down(self, reason: str) -> None:
        """Stop being the leader: unlock if the session is still there (else it is already gone)."""
        if not self.is_leader:
            return
        self.stats.role = "standby"
        log.warning("no longer the leader of %s: %s", self._names.outbox.text, reason)
        if self._conn is not None and not self._conn.closed:
            try:
                with mapped_errors("releasing the outbox lock"):
                    await self._conn.execute(
                        "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [self._key]
                    )
            except DatabaseUnavailable:
                await self.disconnect()

    async def leave(self) -> None:
        """At a clean stop: unlock, remove this instance's nodes row, close the session."""
        if self._conn is not None and not self._conn.closed:
            try:
                with mapped_errors("leaving the nodes table"):
                    if self.is_leader:
                        await self._conn.execute(
                            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [self._key]
                        )
                    await self._conn.execute(self._leave, [self.instance_id])
            except DatabaseUnavailable as exc:
                log.warning("could not leave the nodes table cleanly: %s", exc)
        self.stats.role = "standby"
        await self.disconnect()

    async def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.stats.connected = False
        if conn is not None:
            await close_quietly(conn)
        if self.is_leader:
            self.stats.role = "standby"
            log.warning("no longer the leader of %s: the lock session ended", self._names.outbox.text)

    async def wait(self, stop: asyncio.Event) -> None:
        """Sleep one heartbeat interval, or less if `stop` is set."""
        try:
            await asyncio.wait_for(stop.wait(), self.interval_s)
        except TimeoutError:
            return
