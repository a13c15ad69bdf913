"""Leadership in-process: the fence on position writes, readiness of a standby, and the clean stop."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.postgres.harness import insert_row, outbox_ids, running, until, wait_delivered


def watermark_row(conn: psycopg.Connection[Any]) -> tuple[int, int, str]:
    row = conn.execute("SELECT sequence_id, epoch, leader FROM outbox_watermark").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), str(row[2])


async def test_a_deposed_leaders_position_write_matches_nothing_and_it_steps_down(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(pg_env, INSTANCE_ID="solo") as handle:
        worker = handle.worker
        first_epoch = worker.leadership.epoch
        assert watermark_row(outbox)[1:] == (first_epoch, "solo")
        # Another instance took over: it bumped the epoch. Our next write must fail, not land.
        outbox.execute("UPDATE outbox_watermark SET epoch = epoch + 1, leader = 'usurper'")
        insert_row(outbox, "ch", {"n": 1})
        await until(lambda: worker.leadership.changes >= 2, what="step down and lead again")
        await until(handle.leading, what="leading again")
        assert worker.leadership.epoch == first_epoch + 2
        insert_row(outbox, "ch", {"n": 2})
        got = await wait_delivered(ably, 2)
        assert [m["channel"] for m in got] == ["ch", "ch"]
        await until(lambda: watermark_row(outbox)[0] == int(got[-1]["id"]), what="the watermark")
        assert watermark_row(outbox)[1:] == (first_epoch + 2, "solo")


async def test_a_standby_is_ready_and_publishes_nothing(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(pg_env, INSTANCE_ID="one") as leader:
        async with running(pg_env, lead=False, INSTANCE_ID="two") as standby:
            await until(lambda: standby.lease_store.heartbeats >= 2, what="the standby's heartbeats")
            ready, details = standby.worker.readiness()
            assert ready and details["role"] == "standby"
            snapshot = standby.worker.snapshot()
            assert (snapshot["leader"], snapshot["lease_epoch"], snapshot["leader_changes"]) == (0, 0, 0)
            insert_row(outbox, "ch", {"n": 1})
            await wait_delivered(ably, 1)
            assert leader.worker.readiness()[1]["role"] == "leader"
            assert leader.worker.snapshot()["leader"] == 1
            assert standby.worker.snapshot()["messages_published"] == 0
            nodes = sorted(str(r[0]) for r in outbox.execute("SELECT id FROM nodes"))
            assert nodes == ["one", "two"]
        nodes = sorted(str(r[0]) for r in outbox.execute("SELECT id FROM nodes"))
        assert nodes == ["one"], "a cleanly stopped instance leaves the nodes table"


async def test_sigterm_drains_in_flight_rows_stores_the_position_and_exits_0(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    ably.configure(latency_ms=300)  # keep publishes in flight when the stop lands
    try:
        async with running(pg_env, CHECKPOINT_INTERVAL_MS="60000", SHUTDOWN_GRACE_S="10") as handle:
            ids = [insert_row(outbox, f"ch{i % 4}", {"i": i}) for i in range(40)]
            term = handle.worker.term
            assert term is not None
            await until(lambda: term.ledger.pending > 0, what="rows in flight")
            status = await handle.stop()
    finally:
        ably.configure(latency_ms=0)
    assert status == 0
    assert len(ably.messages()) == 40
    assert watermark_row(outbox)[0] == ids[-1], "the final position covers every drained row"
    assert outbox_ids(outbox) == [(ids[-1], True)]
