"""The overflow store on PostgreSQL: a throttled channel's spilled rows (`connector.ably.overflow`).

Table `<outbox>_overflow (sequence_id BIGINT PRIMARY KEY, channel TEXT, message JSONB, size INTEGER)`,
created with the connector's other tables: one row per spilled message, written in the same autocommit
connection as the connector's other writes before the outbox row counts as done (and is deleted), so a
spilled message is never in neither table. `sequence_id` orders a channel's messages; the order keys the
overflow logic compares are it zero-padded to 20 digits (text order = numeric order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
from psycopg import sql

from connector.ably.outbound import OutboundMessage
from connector.sources.postgres.db import Connection, mapped_errors
from connector.sources.postgres.names import OutboxNames

__all__ = ["PostgresSpillStore", "order_key"]

KEY_DIGITS: Final = 20


def order_key(sequence_id: int) -> str:
    return f"{sequence_id:0{KEY_DIGITS}d}"


def overflow_ddl(names: OutboxNames) -> list[sql.Composed]:
    table = names.overflow.sql
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (sequence_id BIGINT PRIMARY KEY, channel TEXT NOT NULL, "
            "message JSONB NOT NULL, size INTEGER NOT NULL)"
        ).format(table),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (channel, sequence_id)").format(
            sql.Identifier(names.overflow.name + "_channel"), table
        ),
    ]


class PostgresSpillStore:
    def __init__(self, conn: Connection, names: OutboxNames) -> None:
        self._conn = conn
        table = names.overflow.sql
        self._channels = sql.SQL("SELECT DISTINCT channel FROM {}").format(table)
        self._insert = sql.SQL(
            "INSERT INTO {} (sequence_id, channel, message, size) "
            "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::jsonb[], %s::int[]) "
            "ON CONFLICT (sequence_id) DO NOTHING"
        ).format(table)
        self._load = sql.SQL(
            "SELECT sequence_id, message::text, size FROM {} WHERE channel = %s AND sequence_id > %s "
            "AND sequence_id <= %s ORDER BY sequence_id LIMIT %s"
        ).format(table)
        self._any = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE channel = %s AND sequence_id > %s)"
        ).format(table)
        self._delete = sql.SQL("DELETE FROM {} WHERE sequence_id = ANY(%s::bigint[])").format(table)

    async def channels(self) -> list[str]:
        with mapped_errors("reading the overflow table"):
            cur = await self._conn.execute(self._channels)
            return [str(row[0]) for row in await cur.fetchall()]

    async def write(self, msgs: Sequence[OutboundMessage]) -> None:
        ids = [int(msg.message["id"]) for msg in msgs]
        channels = [msg.channel for msg in msgs]
        bodies = [orjson.dumps(dict(msg.message)).decode() for msg in msgs]
        sizes = [msg.size for msg in msgs]
        with mapped_errors("writing spilled rows"):
            await self._conn.execute(self._insert, [ids, channels, bodies, sizes])

    async def load(self, channel: str, after: str | None, upto: str, limit: int) -> list[OutboundMessage]:
        low = int(after) if after is not None else -1
        with mapped_errors("reading the overflow table"):
            cur = await self._conn.execute(self._load, [channel, low, int(upto), limit])
            records: list[tuple[Any, ...]] = await cur.fetchall()
        return [
            OutboundMessage(
                seq=-1,
                channel=channel,
                message=orjson.loads(text),
                size=int(size),
                token={"spill": str(sequence_id), "key": order_key(int(sequence_id))},
            )
            for sequence_id, text, size in records
        ]

    async def any_after(self, channel: str, after: str | None) -> bool:
        low = int(after) if after is not None else -1
        with mapped_errors("reading the overflow table"):
            cur = await self._conn.execute(self._any, [channel, low])
            row = await cur.fetchone()
        return bool(row and row[0])

    async def delete(self, keys: Sequence[str]) -> None:
        with mapped_errors("deleting drained rows"):
            await self._conn.execute(self._delete, [[int(key) for key in keys]])
