"""`create-tables` (idempotent, Ably's DDL), `check`, and the start-up schema check."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from connector.config import load_settings
from connector.runtime import Runtime
from connector.sources.postgres.check import run_checks, run_create_tables
from connector.sources.postgres.source import PostgresSource
from tests.postgres.harness import insert_row, running, wait_delivered


def create(env: dict[str, str]) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = asyncio.run(run_create_tables(load_settings(env, env_file=None), out=lines.append))
    return status, lines


def test_create_tables_creates_ablys_schema_and_is_idempotent(pg_env: dict[str, str]) -> None:
    status, first = create(pg_env)
    assert status == 0
    assert "created table public.nodes" in first and "created table public.outbox" in first
    assert any(line.startswith("created function public.outbox_notify()") for line in first)
    status, second = create(pg_env)
    assert status == 0
    assert "table public.outbox exists" in second and "table public.nodes exists" in second
    assert any(
        "outbox_notify_trigger on public.outbox already notifies 'ably_adbc'" in line for line in second
    )
    with psycopg.connect(pg_env["POSTGRES_URI"], autocommit=True) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = 'outbox' ORDER BY ordinal_position"
        ).fetchall()
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()
        assert conn.execute("SELECT public.outbox_sync_sequence_id()").fetchone() == (0,)
    assert [c[0] for c in columns] == [
        "sequence_id", "mutation_id", "channel", "name", "rejected", "data", "headers", "locked_by",
        "lock_expiry", "processed",
    ]  # fmt: skip
    assert columns[0][3].startswith("nextval(")
    assert triggers == (1,)


def test_create_tables_honours_the_table_settings(pg_env: dict[str, str]) -> None:
    env = {**pg_env, "ADBC_OUTBOX_TABLE_TABLE_SCHEMA": "app", "ADBC_OUTBOX_TABLE_TABLE_NAME": "events",
           "NODES_TABLE": "app.members"}  # fmt: skip
    status, lines = create(env)
    assert status == 0
    assert "created table app.events" in lines and "created table app.members" in lines
    assert "installed function app.events_sync_sequence_id() (the sync() watermark)" in lines


def test_check_passes_on_created_tables(pg_env: dict[str, str], ably: Any) -> None:
    create(pg_env)
    lines: list[str] = []
    status = asyncio.run(run_checks(load_settings(pg_env, env_file=None), out=lines.append))
    assert status == 0, lines
    assert any("trigger outbox_notify_trigger notifies 'ably_adbc'" in line for line in lines)
    assert lines[-1] == "all checks passed"


def test_check_reports_missing_tables_columns_trigger_and_privileges(
    pg_env: dict[str, str], ably: Any
) -> None:
    dsn = pg_env["POSTGRES_URI"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE outbox (sequence_id SERIAL PRIMARY KEY, mutation_id TEXT, channel TEXT)")
        conn.execute("CREATE ROLE reader LOGIN")
        conn.execute("GRANT SELECT ON outbox TO reader")
    lines: list[str] = []
    settings = load_settings(pg_env, env_file=None)
    assert asyncio.run(run_checks(settings, out=lines.append)) == 1
    text = "\n".join(lines)
    assert "FAIL  public.outbox.name is missing (code 72003)" in text
    assert (
        "FAIL  table public.nodes does not exist; run `livesync-connector create-tables` (code 72003)" in text
    )
    create(pg_env)  # adds nodes and the trigger; leaves the broken outbox as it is
    lines.clear()
    as_reader = {**pg_env, "POSTGRES_URI": dsn.replace("postgres@", "reader@")}
    assert asyncio.run(run_checks(load_settings(as_reader, env_file=None), out=lines.append)) == 1
    text = "\n".join(lines)
    assert "this role lacks UPDATE, DELETE on public.outbox" in text
    assert "this role lacks SELECT, INSERT, UPDATE, DELETE on public.nodes" in text


async def test_worker_exits_1_naming_the_problem_when_tables_are_missing(pg_env: dict[str, str]) -> None:
    settings = load_settings(pg_env, env_file=None)
    worker = Runtime(settings, PostgresSource(settings))
    assert await asyncio.wait_for(worker.run(), 30) == 1


async def test_auto_create_makes_ablys_tables_at_start_as_ablys_connector_does(
    pg_env: dict[str, str], ably: Any
) -> None:
    """ADBC_{OUTBOX,NODES}_TABLE_AUTO_CREATE (ours: {OUTBOX,NODES}_TABLE_AUTO_CREATE) on a database without
    Ably's tables: created at start-up, with the notify trigger, and rows flow."""
    env = {**pg_env, "ADBC_OUTBOX_TABLE_AUTO_CREATE": "true", "ADBC_NODES_TABLE_AUTO_CREATE": "true"}
    async with running(env) as handle:
        with psycopg.connect(pg_env["POSTGRES_URI"], autocommit=True) as conn:
            insert_row(conn, "ch", {"n": 1})
            got = await wait_delivered(ably, 1)
            triggers = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'outbox'::regclass"
            ).fetchone()
        term = handle.term
        assert term is not None and term.listener.stats.listening, "the trigger's NOTIFY is listened for"
    assert [m["channel"] for m in got] == ["ch"]
    assert triggers is not None and triggers[0] >= 1


async def test_poll_fixed_rate_reads_on_the_interval_without_listening(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(pg_env, ADBC_POLL_FIXED_RATE="true", POLL_INTERVAL_MS="200") as handle:
        insert_row(outbox, "ch", {"n": 1})
        await wait_delivered(ably, 1)
        term = handle.term
        assert term is not None
        assert not term.listener.stats.listening and term.listener.stats.notifications == 0
        running_tasks = {t.get_name() for t in asyncio.all_tasks()}
        assert "listener" not in running_tasks and "reader" in running_tasks
