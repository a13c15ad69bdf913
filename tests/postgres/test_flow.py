"""The outbox source end to end on a real PostgreSQL: mapping, NOTIFY and polling, commit-order gaps,
the tombstone and the sync() watermark. The connector runs in-process; Ably is the emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from tests.postgres.harness import delivered, insert_row, outbox_ids, running, until, wait_delivered


def sync_sequence_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT outbox_sync_sequence_id()").fetchone()
    assert row is not None
    return int(row[0])


async def test_rows_published_as_ablys_connector_does_and_only_the_tombstone_kept(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    first = insert_row(outbox, "posts:1", {"title": "a"}, name="add", mutation_id="m1", headers={"h": "v"})
    insert_row(outbox, "posts:1", {"title": "b"}, name="edit", mutation_id="m2", rejected=True)
    last = insert_row(outbox, "posts:2", None, name="delete", mutation_id="m3")
    async with running(pg_env):
        got = await wait_delivered(ably, 3)
        await until(lambda: outbox_ids(outbox) == [(last, True)], what="published rows deleted")
        assert sync_sequence_id(outbox) == last
    assert [(m["channel"], m["id"], m["name"]) for m in got] == [
        ("posts:1", str(first), "add"),
        ("posts:1", str(first + 1), "edit"),
        ("posts:2", str(last), "delete"),
    ]
    assert got[0]["payload"] == {"title": "a"} and got[0]["extras"]["headers"] == {
        "h": "v",
        "x-ably-models-event-uuid": "m1",
    }
    assert got[1]["extras"]["headers"]["x-ably-models-reject"] == "true"
    assert "data" not in got[2] or got[2]["data"] is None


async def test_tombstone_moves_up_and_max_sequence_id_keeps_working(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(pg_env):
        ids = [insert_row(outbox, f"ch{i % 3}", {"i": i}) for i in range(30)]
        await wait_delivered(ably, 30)
        await until(lambda: outbox_ids(outbox) == [(ids[-1], True)], what="the tombstone")
        more = [insert_row(outbox, "ch0", {"i": i}) for i in range(5)]
        await wait_delivered(ably, 35)
        await until(lambda: outbox_ids(outbox) == [(more[-1], True)], what="the tombstone to move")
        assert outbox.execute("SELECT max(sequence_id) FROM outbox").fetchone() == (more[-1],)


async def test_notification_wakes_the_reader_long_before_the_poll_interval(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(pg_env, POLL_INTERVAL_MS="600000") as handle:
        term = handle.term
        assert term is not None
        await until(lambda: term.listener.stats.listening, what="LISTEN")
        insert_row(outbox, "live", {"n": 1})
        # The wait bound (30 s) is far below the 10-minute poll interval: only NOTIFY can deliver in time.
        await wait_delivered(ably, 1)
        assert term.listener.stats.notifications >= 1


async def test_polling_finds_rows_when_notifications_are_lost(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    outbox.execute("DROP TRIGGER outbox_notify_trigger ON outbox")
    async with running(pg_env, POLL_INTERVAL_MS="100") as handle:
        insert_row(outbox, "quiet", {"n": 1})
        await wait_delivered(ably, 1)
        term = handle.term
        assert term is not None and term.listener.stats.notifications == 0
        # The listener's session is killed too: rows still arrive by polling, and the listener comes back.
        outbox.execute("SELECT pg_terminate_backend(%s)", [term.listener.backend_pid])
        insert_row(outbox, "quiet", {"n": 2})
        await wait_delivered(ably, 2)
        await until(
            lambda: term.listener.stats.reconnects >= 1 and term.listener.stats.listening, what="relisten"
        )


async def test_a_lower_id_committed_later_is_still_published_first(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any, pg_dsn: str
) -> None:
    async with running(pg_env, GAP_TIMEOUT_MS="60000") as handle:
        with psycopg.connect(pg_dsn) as slow:  # transaction A draws 1 and stays open
            nine = insert_row(slow, "doc", {"v": "A"}, mutation_id="A")
            ten = insert_row(outbox, "doc", {"v": "B"}, mutation_id="B")  # B draws 2 and commits first
            term = handle.term
            assert term is not None and term.reader is not None
            reader = term.reader
            await until(lambda: reader.held == 1 and reader.tracker.gaps, what="row 10 held back")
            await asyncio.sleep(0.2)  # several rounds: row 10 must stay held while 9 is open
            assert delivered(ably) == []
            assert sync_sequence_id(outbox) < nine, "the watermark must stay below the open gap"
            slow.commit()
        got = await wait_delivered(ably, 2)
        assert [m["id"] for m in got] == [str(nine), str(ten)]
        await until(lambda: sync_sequence_id(outbox) == ten, what="the watermark")
        assert reader.stats.gaps_timed_out == 0


async def test_a_rolled_back_insert_is_proven_a_permanent_gap(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any, pg_dsn: str
) -> None:
    async with running(pg_env, GAP_TIMEOUT_MS="60000") as handle:
        term = handle.term
        assert term is not None and term.reader is not None
        reader = term.reader
        with psycopg.connect(pg_dsn) as doomed:
            insert_row(doomed, "doc", {"v": "never"})
            kept = insert_row(outbox, "doc", {"v": "kept"})
            await until(lambda: reader.held == 1, what="the row above the gap held back")
            doomed.rollback()
        got = await wait_delivered(ably, 1)
        assert [m["id"] for m in got] == [str(kept)]
        assert reader.stats.gaps_proven >= 1 and reader.stats.gaps_timed_out == 0
        print(
            f"\n[postgres] rolled-back gap held publishing for {reader.stats.last_gap_wait_s * 1000:.1f} ms"
        )


async def test_a_gap_older_than_the_timeout_is_skipped_and_its_row_published_late(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any, pg_dsn: str
) -> None:
    async with running(pg_env, GAP_TIMEOUT_MS="300") as handle:
        term = handle.term
        assert term is not None and term.reader is not None
        reader = term.reader
        with psycopg.connect(pg_dsn) as long_tx:
            late = insert_row(long_tx, "doc", {"v": "late"})
            early = insert_row(outbox, "doc", {"v": "early"})
            got = await wait_delivered(ably, 1)  # published once the gap timed out
            assert [m["id"] for m in got] == [str(early)] and reader.stats.gaps_timed_out == 1
            long_tx.commit()
        got = await wait_delivered(ably, 2)
        assert [m["id"] for m in got] == [str(early), str(late)]
        assert reader.stats.late_rows == 1
        await until(
            lambda: outbox_ids(outbox) == [(early, True)], what="the late row deleted, tombstone kept"
        )


async def test_unpublishable_rows_are_dead_lettered_and_never_block(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    bad = insert_row(outbox, ":bad", {"v": 1})
    headers = insert_row(outbox, "ok", {"v": 2}, headers={"n": 1})
    big = insert_row(outbox, "ok", {"v": "x" * 70_000})
    good = insert_row(outbox, "ok", {"v": 3})
    async with running(pg_env, ON_OVERSIZE="deadletter"):
        got = await wait_delivered(ably, 1)
        await until(lambda: outbox_ids(outbox) == [(good, True)], what="the outbox emptied")
    assert [m["id"] for m in got] == [str(good)]
    letters = outbox.execute("SELECT sequence_id, code, reason FROM outbox_deadletter ORDER BY 1").fetchall()
    assert [(r[0], r[1]) for r in letters] == [(bad, 72004), (headers, 72001), (big, 72001)]
    assert "over MAX_MESSAGE_SIZE" in letters[2][2]


async def test_oversize_row_reaches_its_channel_truncated_in_order(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    first = insert_row(outbox, "doc", {"v": 1})
    big = insert_row(outbox, "doc", {"v": "x" * 70_000})
    last = insert_row(outbox, "doc", {"v": 3})
    async with running(pg_env) as handle:
        got = await wait_delivered(ably, 3)
        await until(lambda: outbox_ids(outbox) == [(last, True)], what="the outbox emptied")
        term = handle.term
        assert term is not None and term.reader is not None and term.reader.stats.truncated == 1
    assert [m["id"] for m in got] == [str(first), str(big), str(last)]
    truncated = got[1]
    assert "data" not in truncated or truncated["data"] is None
    headers = truncated["extras"]["headers"]
    assert headers["x-livesync-truncated"] == "true" and int(headers["x-livesync-original-size"]) > 70_000
    assert outbox.execute("SELECT count(*) FROM outbox_deadletter").fetchone() == (0,)


@pytest.mark.parametrize("policy", ["skip", "fail"])
async def test_on_unpublishable_skip_and_fail(
    policy: str, pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    bad = insert_row(outbox, "[x", {"v": 1})
    insert_row(outbox, "ok", {"v": 2})
    async with running(pg_env, lead=False, ON_UNPUBLISHABLE=policy) as handle:
        if policy == "skip":
            await wait_delivered(ably, 1)
        else:
            assert await asyncio.wait_for(handle.task, 30) == 1
            assert delivered(ably) == []
            assert (bad, False) in outbox_ids(outbox), "a row that stopped the connector stays in the outbox"
