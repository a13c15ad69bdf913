"""`livesync-connector deadletter list | show | replay | purge` on the Postgres outbox source: dead letters
written by the connector's own `UnpublishableRows` into `outbox_deadletter`, a real PostgreSQL, the Ably
emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connector.sources.postgres.db import connect
from connector.sources.postgres.deadletter import UnpublishableRows
from connector.sources.postgres.messages import OutboxRow
from connector.sources.postgres.names import OutboxNames
from tests.deadletter_cli import listed, run

BIG = json.dumps({"blob": "x" * 3_000})

#: (row, reason, code, kind) in outbox order.
DEAD = [
    (
        OutboxRow(11, "m11", "orders:1", "update", False, BIG, '{"tenant": "a"}'),
        "message is 3100 bytes",
        72001,
        "too_large",
    ),
    (
        OutboxRow(12, "m12", "orders:2", "update", False, BIG, None),
        "message is 3100 bytes",
        72001,
        "too_large",
    ),
    (
        OutboxRow(13, "m13", "locked:3", "insert", True, '{"v": 3}', None),
        "rejected by Ably (40160)",
        40160,
        "rejected",
    ),
    (
        OutboxRow(14, "m14", "[bad", "insert", False, '{"v": 4}', None),
        "channel name must not start with '['",
        72004,
        "no_channel",
    ),
]
IDS = ["11", "12", "13", "14"]


@pytest.fixture
def env(pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAX_MESSAGE_SIZE", "1000")
    return pg_env


@pytest.fixture
def dead(env: dict[str, str], outbox: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    async def write() -> None:
        conn = await connect(env["POSTGRES_URI"], purpose="test")
        handler = UnpublishableRows(
            "deadletter", conn, OutboxNames.from_settings("public.outbox", "public.nodes")
        )
        for row, reason, code, kind in DEAD:
            await handler.handle(row, reason, code, kind=kind)
        await conn.close()

    asyncio.run(write())
    yield outbox


def marks(conn: psycopg.Connection[Any], seq: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT replay_outcome, replay_form, replays, replayed_at IS NOT NULL, kind, code, reason "
        "FROM outbox_deadletter WHERE sequence_id = %s",
        [seq],
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_list_and_filters(dead: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()[1:5]] == IDS
    assert out.splitlines()[-1] == "4 dead letter(s) in public.outbox_deadletter"
    assert listed(capsys, "--kind", "too_large") == IDS[:2]
    assert listed(capsys, "--channel", "orders:*") == IDS[:2]
    assert listed(capsys, "--channel", "orders:*", "--limit", "1") == IDS[:1]  # LIKE, limited in the query
    assert listed(capsys, "--channel", "[ol]*:?") == IDS[:3]  # a class: matched by the core
    assert listed(capsys, "--channel", "locked:3") == ["13"]
    assert listed(capsys, "--reason", "40160") == ["13"]
    assert listed(capsys, "--limit", "2") == IDS[:2]
    assert listed(capsys, "--since", "10m") == IDS
    assert listed(capsys, "--until", "10m") == []
    assert listed(capsys, "--pending") == IDS


def test_show_and_an_unknown_id(dead: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "show", "11")
    assert status == 0
    shown = json.loads(out)
    assert shown["stored"]["data"] == json.loads(BIG) and shown["stored"]["headers"] == {"tenant": "a"}
    assert shown["stored"]["mutation_id"] == "m11"
    assert run(capsys, "show", "99")[0] == 3
    assert run(capsys, "show", "not-a-number")[0] == 3


def test_dry_run_sends_and_marks_nothing(
    dead: psycopg.Connection[Any], ably: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "replay", "--all", "--dry-run")
    assert status == 0
    assert "would send  11 to 'orders:1' as 'update' (compact" in out
    assert "would fail  14 on '[bad': channel name must not start with '['" in out
    assert ably.messages() == []
    assert marks(dead, 11)[:3] == (None, None, 0)


def test_replay_compact_then_nothing_then_as_original(
    dead: psycopg.Connection[Any],
    ably: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, out, _ = run(capsys, "replay", "--kind", "too_large")
    assert status == 0, out
    sent = {m["id"]: m for m in ably.messages()}
    assert set(sent) == {"11", "12"}
    message = sent["11"]
    assert message["channel"] == "orders:1" and message.get("data") is None
    headers = message["extras"]["headers"]
    assert headers["tenant"] == "a" and headers["x-ably-models-event-uuid"] == "m11"
    assert headers["x-livesync-truncated"] == "true" and headers["x-livesync-replayed"] == "true"
    assert int(headers["x-livesync-original-size"]) > 3_000
    assert marks(dead, 11)[:4] == ("published", "compact", 1, True)
    assert run(capsys, "replay", "--kind", "too_large")[0] == 3
    assert len(ably.messages()) == 2
    # --again --as-original with the limit raised: the same ids, so within Ably's window they are dropped;
    # on a fresh emulator (past the window) the whole row arrives.
    ably.reset()
    monkeypatch.setenv("MAX_MESSAGE_SIZE", "65536")
    status, out, _ = run(capsys, "replay", "--id", "11", "--again", "--as-original")
    assert status == 0, out
    [message] = ably.messages()
    assert json.loads(message["data"]) == json.loads(BIG)
    assert "x-livesync-truncated" not in message["extras"]["headers"]
    assert marks(dead, 11)[:3] == ("published", "original", 2)


def test_a_replay_reads_page_by_page_in_outbox_order(
    dead: psycopg.Connection[Any],
    ably: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connector.deadletter import commands

    monkeypatch.setattr(commands, "REPLAY_PAGE", 1)
    status, out, _ = run(capsys, "replay", "--all", "--limit", "3")
    assert status == 0, out
    assert "replayed 3 of 3 dead letter(s)" in out
    assert [m["id"] for m in ably.messages()] == IDS[:3]
    status, out, _ = run(capsys, "replay", "--all")  # the fourth: a channel name Ably refuses
    assert status == 1 and "replayed 0 of 1 dead letter(s)" in out
    assert [m["id"] for m in ably.messages()] == IDS[:3]


def test_a_rejected_channel_stays_a_dead_letter_with_the_new_reason(
    dead: psycopg.Connection[Any], ably: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ably.inject_fault(
        mode="partial", status=401, code=40160, message="capability denied", channels=["locked:3"]
    )
    status, out, _ = run(capsys, "replay", "--channel", "locked:3")
    assert status == 1
    assert "the key may not publish on 'locked:3': widen its capability" in out
    outcome, _, replays, _, kind, code, reason = marks(dead, 13)
    assert (outcome, replays, kind, code) == (
        "failed",
        1,
        "rejected",
        40160,
    ) and "capability denied" in reason
    ably.clear_faults()
    assert run(capsys, "replay", "--channel", "locked:3")[0] == 0
    [message] = ably.messages("locked:3")
    assert message["extras"]["headers"]["x-ably-models-reject"] == "true"


def test_purge(dead: psycopg.Connection[Any], ably: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "replay", "--id", "12")[0] == 0
    assert run(capsys, "purge", "--replayed")[0] == 2
    status, out, _ = run(capsys, "purge", "--replayed", "--yes")
    assert status == 0 and "purged 1 dead letter(s)" in out
    assert listed(capsys) == ["11", "13", "14"]
    assert run(capsys, "purge", "--id", "12", "--yes")[0] == 3
    assert run(capsys, "purge", "--all", "--yes")[0] == 0
    assert listed(capsys) == []


def test_a_table_created_before_the_replay_columns_gets_them(
    env: dict[str, str], outbox: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    outbox.execute(
        "ALTER TABLE outbox_deadletter DROP COLUMN kind, DROP COLUMN replayed_at, "
        "DROP COLUMN replay_outcome, DROP COLUMN replay_form, DROP COLUMN replays"
    )
    outbox.execute(
        "INSERT INTO outbox_deadletter (sequence_id, channel, name, reason, code) "
        "VALUES (5, 'c', 'n', 'r', 1)"
    )
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert out.splitlines()[1].split()[:5] == ["5", *out.splitlines()[1].split()[1:3], "invalid", "1"]


def test_errors(
    env: dict[str, str], pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "list")  # no create-tables yet
    assert status == 1
    assert "dead-letter table public.outbox_deadletter does not exist" in err
    monkeypatch.setenv("POSTGRES_URI", "postgresql://nobody@127.0.0.1:1/none")
    status, _, err = run(capsys, "list")
    assert status == 1
    assert "livesync-connector: deadletter list: connecting to PostgreSQL (deadletter)" in err
    assert len([line for line in err.splitlines() if line.startswith("livesync-connector:")]) == 1
