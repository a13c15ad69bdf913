"""`livesync-connector check` for SOURCE=postgres: tables, columns, trigger, privileges and Ably, publishing
nothing. One line per check (`ok` / `warn` / `FAIL` with the code); exit status 0 only if all passed.

`schema_problems()` is also what the worker runs at start-up: a missing table or column, or a missing
privilege, is fatal there (exit 1 with the reason) rather than a retry loop.
"""

from __future__ import annotations

import logging

from connector.check_report import Out, Report, check_ably
from connector.config import Settings
from connector.errors import ConnectorError
from connector.sources.postgres.db import Connection, close_quietly, connect, mapped_errors
from connector.sources.postgres.names import NOTIFY_CHANNEL, OutboxNames, TableName
from connector.sources.postgres.schema import NODES_COLUMNS, OUTBOX_COLUMNS, exists, notify_triggers

log = logging.getLogger(__name__)

#: Privileges the connector uses on Ably's tables.
OUTBOX_PRIVILEGES = ("SELECT", "UPDATE", "DELETE")
NODES_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
CONNECTOR_PRIVILEGES = ("SELECT", "INSERT", "UPDATE")


async def _columns(conn: Connection, table: TableName) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        [table.schema, table.name],
    )
    return {str(name): str(kind) for name, kind in await cur.fetchall()}


async def _missing_privileges(conn: Connection, table: TableName, wanted: tuple[str, ...]) -> list[str]:
    cur = await conn.execute(
        "SELECT p FROM unnest(%s::text[]) AS p WHERE NOT has_table_privilege(%s, p)",
        [list(wanted), table.sql.as_string(conn)],
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def _table_problems(
    conn: Connection, table: TableName, expected: dict[str, str], privileges: tuple[str, ...]
) -> list[str]:
    if not await exists(conn, table):
        return [f"table {table.text} does not exist; run `livesync-connector create-tables`"]
    found = await _columns(conn, table)
    problems = [
        f"{table.text}.{column} is missing"
        if column not in found
        else f"{table.text}.{column} is {found[column]}, not {kind}"
        for column, kind in expected.items()
        if found.get(column) != kind
    ]
    missing = await _missing_privileges(conn, table, privileges)
    if missing:
        problems.append(f"this role lacks {', '.join(missing)} on {table.text}")
    return problems


async def schema_problems(conn: Connection, names: OutboxNames) -> list[str]:
    """What stops the connector from working on these tables (empty when all is well)."""
    with mapped_errors("checking the outbox tables"):
        problems = await _table_problems(conn, names.outbox, OUTBOX_COLUMNS, OUTBOX_PRIVILEGES)
        problems += await _table_problems(conn, names.nodes, NODES_COLUMNS, NODES_PRIVILEGES)
        for own in (names.watermark, names.deadletter):
            if await exists(conn, own):
                missing = await _missing_privileges(conn, own, CONNECTOR_PRIVILEGES)
                if missing:
                    problems.append(f"this role lacks {', '.join(missing)} on {own.text}")
    return problems


async def sequence_cache(conn: Connection, names: OutboxNames) -> int | None:
    """The CACHE of the outbox's sequence_id sequence (gap proofs assume 1, SERIAL's default)."""
    cur = await conn.execute(
        "SELECT s.seqcache FROM pg_sequence s "
        "WHERE s.seqrelid = pg_get_serial_sequence(%s, 'sequence_id')::regclass",
        [names.outbox.sql.as_string(conn)],
    )
    row = await cur.fetchone()
    return int(str(row[0])) if row else None


async def _check_database(settings: Settings, names: OutboxNames, report: Report) -> None:
    try:
        conn = await connect(settings.postgres_uri, purpose="check")
    except ConnectorError as exc:
        report.fail(f"PostgreSQL unreachable: {exc}", 72003)
        return
    try:
        report.ok(f"PostgreSQL reachable (server {conn.info.server_version})")
        problems = await schema_problems(conn, names)
        for problem in problems:
            report.fail(problem, 72003)
        if problems:
            return
        report.ok(
            f"tables {names.outbox.text} and {names.nodes.text} have Ably's columns "
            "and this role's privileges"
        )
        triggers = await notify_triggers(conn, names)
        if triggers:
            report.ok(f"trigger {', '.join(triggers)} notifies {NOTIFY_CHANNEL!r} after inserts")
        else:
            report.warn(
                f"no trigger on {names.outbox.text} notifies {NOTIFY_CHANNEL!r}: rows are found by polling "
                f"only (every POLL_INTERVAL_MS={settings.poll_interval_ms}); `create-tables` adds it"
            )
        cache = await sequence_cache(conn, names)
        if cache not in (None, 1):
            report.warn(
                f"the sequence_id sequence has CACHE {cache}: gaps are then resolved by GAP_TIMEOUT_MS only"
            )
        if not await exists(conn, names.watermark):
            report.warn(
                f"{names.watermark.text} does not exist yet: the connector creates it at start "
                "(or run create-tables)"
            )
        else:
            report.ok(f"sync() watermark: SELECT {names.sync_function.text}()")
    except ConnectorError as exc:
        report.fail(str(exc), exc.code)
    finally:
        await close_quietly(conn)


async def run_checks(settings: Settings, *, out: Out) -> int:
    report = Report(out)
    names = OutboxNames.from_settings(settings.outbox_table, settings.nodes_table)
    report.ok(f"configuration valid; outbox {names.outbox.text}, nodes {names.nodes.text}")
    await _check_database(settings, names, report)
    await check_ably(settings, report)
    return report.finish()


async def run_create_tables(settings: Settings, *, out: Out) -> int:
    """`livesync-connector create-tables`: apply the DDL idempotently, one line per object."""
    names = OutboxNames.from_settings(settings.outbox_table, settings.nodes_table)
    from connector.sources.postgres.schema import create_tables

    conn: Connection | None = None
    try:
        conn = await connect(settings.postgres_uri, purpose="create-tables")
        await create_tables(conn, names, out)
    except ConnectorError as exc:
        log.critical("%s", exc, extra={"code": exc.code})
        return 1
    finally:
        await close_quietly(conn)
    out("tables ready")
    return 0
