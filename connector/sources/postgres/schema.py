"""`livesync-connector create-tables`: Ably's outbox schema, unchanged, plus the connector's own objects.

Ably's objects (created only when missing; an existing deployment already has them):
- `nodes(id TEXT PRIMARY KEY, expiry TIMESTAMP NOT NULL)`;
- `outbox(sequence_id SERIAL PRIMARY KEY, mutation_id, channel, name, rejected, data JSONB, headers
  JSONB, locked_by, lock_expiry, processed)`;
- a function doing `pg_notify('ably_adbc', '')` and an `AFTER INSERT ... FOR EACH STATEMENT` trigger on
  the outbox calling it (skipped when a trigger on the outbox already notifies `ably_adbc`).

The connector's own objects (also ensured at every start, so switching images needs no extra step):
- the watermark table: one row with the `sync()` watermark (`sequence_id`), the leadership `epoch`, the
  `leader` and the sequence ranges given up on after GAP_TIMEOUT_MS that are still watched (`open_gaps`);
- the dead-letter table (rows that can never be published, with the reason);
- `<outbox>_sync_sequence_id()`: the watermark, for a backend's `sync()` endpoint to read in the same
  transaction as the state (SECURITY DEFINER, so the application's role needs no grant on the table).

Every statement is idempotent: running `create-tables` twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from psycopg import sql

from connector.sources.postgres.db import Connection, mapped_errors
from connector.sources.postgres.names import NOTIFY_CHANNEL, OutboxNames, TableName
from connector.sources.postgres.overflow_store import overflow_ddl

__all__ = ["NODES_COLUMNS", "OUTBOX_COLUMNS", "create_tables", "ensure_connector_objects", "exists"]

#: Ably's columns and their types (information_schema.columns.data_type), checked by `check`.
OUTBOX_COLUMNS: Final = {
    "sequence_id": "integer",
    "mutation_id": "text",
    "channel": "text",
    "name": "text",
    "rejected": "boolean",
    "data": "jsonb",
    "headers": "jsonb",
    "locked_by": "text",
    "lock_expiry": "timestamp without time zone",
    "processed": "boolean",
}
NODES_COLUMNS: Final = {"id": "text", "expiry": "timestamp without time zone"}

Say = Callable[[str], None]


def _nodes_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, expiry TIMESTAMP WITHOUT TIME ZONE NOT NULL)"
    ).format(names.nodes.sql)


def _outbox_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "sequence_id SERIAL PRIMARY KEY, mutation_id TEXT NOT NULL, channel TEXT NOT NULL, "
        "name TEXT NOT NULL, "
        "rejected BOOLEAN NOT NULL DEFAULT false, data JSONB, headers JSONB, locked_by TEXT, "
        "lock_expiry TIMESTAMP WITHOUT TIME ZONE, processed BOOLEAN NOT NULL DEFAULT false)"
    ).format(names.outbox.sql)


def _notify_function_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN PERFORM pg_notify({}, ''); RETURN NULL; END; $$"
    ).format(names.notify_function.sql, sql.Literal(NOTIFY_CHANNEL))


def _trigger_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL("CREATE TRIGGER {} AFTER INSERT ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
        sql.Identifier(names.outbox.name + "_notify_trigger"), names.outbox.sql, names.notify_function.sql
    )


def _watermark_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id), sequence_id BIGINT NOT NULL DEFAULT 0, "
        "epoch BIGINT NOT NULL DEFAULT 0, leader TEXT, open_gaps JSONB NOT NULL DEFAULT '[]', "
        "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ).format(names.watermark.sql)


def _watermark_row(names: OutboxNames) -> sql.Composed:
    # 0, not MAX(sequence_id): the first fetch then reads every row (processed ones are not published)
    # and treats the ids below the first as one gap range, resolved by proof in a round or two.
    return sql.SQL("INSERT INTO {} (id) VALUES (true) ON CONFLICT (id) DO NOTHING").format(
        names.watermark.sql
    )


def _deadletter_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "sequence_id BIGINT PRIMARY KEY, mutation_id TEXT, channel TEXT, name TEXT, rejected BOOLEAN, "
        "data JSONB, headers JSONB, reason TEXT NOT NULL, code INTEGER NOT NULL, "
        "at TIMESTAMPTZ NOT NULL DEFAULT now(), " + DEADLETTER_LATER_COLUMNS + ")"
    ).format(names.deadletter.sql)


#: Dead-letter columns added after the table's first release (`livesync-connector deadletter`): the
#: reason's kind, and the last replay's time, outcome and form. Added to an older table at start-up.
DEADLETTER_LATER_COLUMNS: Final = (
    "kind TEXT, replayed_at TIMESTAMPTZ, replay_outcome TEXT, replay_form TEXT, "
    "replays INTEGER NOT NULL DEFAULT 0"
)


async def add_deadletter_columns(conn: Connection, names: OutboxNames) -> bool:
    """Add DEADLETTER_LATER_COLUMNS to a dead-letter table created before them; True if it did.

    Checked first: ALTER TABLE takes an exclusive lock even when every column exists."""
    cur = await conn.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = 'replays'",
        [names.deadletter.schema, names.deadletter.name],
    )
    row = await cur.fetchone()
    if row and row[0]:
        return False
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {column}" for column in DEADLETTER_LATER_COLUMNS.split(", "))
    await conn.execute(sql.SQL("ALTER TABLE {} " + adds).format(names.deadletter.sql))
    return True


def _sync_function_ddl(names: OutboxNames) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS BIGINT LANGUAGE sql STABLE SECURITY DEFINER "
        "SET search_path = pg_catalog AS $$ SELECT COALESCE((SELECT sequence_id FROM {}), 0) $$"
    ).format(names.sync_function.sql, names.watermark.sql)


async def exists(conn: Connection, table: TableName) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table.sql.as_string(conn)])
    row = await cur.fetchone()
    return bool(row and row[0])


async def notify_triggers(conn: Connection, names: OutboxNames) -> list[str]:
    """Names of the enabled triggers on the outbox whose function notifies `ably_adbc` after inserts."""
    cur = await conn.execute(
        "SELECT t.tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = to_regclass(%s) AND NOT t.tgisinternal AND t.tgenabled <> 'D' "
        "AND t.tgtype & 4 = 4 AND p.prosrc LIKE %s ORDER BY t.tgname",
        [names.outbox.sql.as_string(conn), f"%{NOTIFY_CHANNEL}%"],
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def _create_table(conn: Connection, table: TableName, ddl: sql.Composed, say: Say) -> None:
    if await exists(conn, table):
        say(f"table {table.text} exists")
        return
    if table.schema != "public":
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
    await conn.execute(ddl)
    say(f"created table {table.text}")


async def ensure_connector_objects(conn: Connection, names: OutboxNames, say: Say) -> None:
    """The watermark, dead-letter and overflow tables and the sync() function (idempotent)."""
    with mapped_errors("creating the connector's tables"):
        await _create_table(conn, names.watermark, _watermark_ddl(names), say)
        await conn.execute(_watermark_row(names))
        await _create_table(conn, names.deadletter, _deadletter_ddl(names), say)
        if await add_deadletter_columns(conn, names):
            say(f"added the replay columns to {names.deadletter.text}")
        if not await exists(conn, names.overflow):
            for statement in overflow_ddl(names):
                await conn.execute(statement)
            say(f"created table {names.overflow.text}")
        await conn.execute(_sync_function_ddl(names))
        say(f"installed function {names.sync_function.text}() (the sync() watermark)")


async def create_missing_tables(
    conn: Connection, names: OutboxNames, *, outbox: bool, nodes: bool, say: Say
) -> None:
    """OUTBOX_TABLE_AUTO_CREATE / NODES_TABLE_AUTO_CREATE: Ably's tables (the outbox with its notify
    trigger) when missing, at start-up."""
    with mapped_errors("creating Ably's outbox tables"):
        if nodes and not await exists(conn, names.nodes):
            await _create_table(conn, names.nodes, _nodes_ddl(names), say)
        if outbox and not await exists(conn, names.outbox):
            await _create_outbox(conn, names, say)


async def _create_outbox(conn: Connection, names: OutboxNames, say: Say) -> None:
    await _create_table(conn, names.outbox, _outbox_ddl(names), say)
    triggers = await notify_triggers(conn, names)
    if triggers:
        say(f"trigger {', '.join(triggers)} on {names.outbox.text} already notifies {NOTIFY_CHANNEL!r}")
    else:
        await conn.execute(_notify_function_ddl(names))
        await conn.execute(_trigger_ddl(names))
        function = names.notify_function.text
        say(f"created function {function}() and its AFTER INSERT trigger on {names.outbox.text}")


async def create_tables(conn: Connection, names: OutboxNames, say: Say) -> None:
    """Ably's tables, function and trigger when missing, then the connector's own objects."""
    with mapped_errors("creating Ably's outbox tables"):
        await _create_table(conn, names.nodes, _nodes_ddl(names), say)
        await _create_outbox(conn, names, say)
    await ensure_connector_objects(conn, names, say)
