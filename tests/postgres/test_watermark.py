"""The sync() watermark under concurrent writers whose transactions commit out of sequence order.

A backend's sync() reads its state and `outbox_sync_sequence_id()` in one REPEATABLE READ transaction.
The Models SDK then replays only messages with ids above that value, so a committed row at or below it
that the snapshot did not see is silently lost to that client. The test records, for every snapshot,
the watermark and which rows were visible, and afterwards checks every row that committed: none may be
at or below a watermark without having been visible in that snapshot. It also counts how often Ably's
documented `MAX(sequence_id)` would have broken that rule (reported, not asserted: it depends on timing).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import psycopg

from tests.postgres.harness import running, until, wait_delivered

WRITERS = 6
ROWS_PER_WRITER = 60
ROLLBACK_EVERY = 7


class Writer(threading.Thread):
    """Inserts an outbox row and an audit row in one transaction, holds it open a little, commits (or,
    every ROLLBACK_EVERY-th time, rolls back)."""

    def __init__(self, dsn: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.committed: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                for i in range(ROWS_PER_WRITER):
                    row = conn.execute(
                        "INSERT INTO outbox (mutation_id, channel, name, data) "
                        "VALUES ('m', 'ch' || (random() * 3)::int, 'u', '{}') RETURNING sequence_id"
                    ).fetchone()
                    assert row is not None
                    conn.execute("INSERT INTO audit (seq) VALUES (%s)", [row[0]])
                    time.sleep(self.rng.uniform(0, 0.02))
                    if i % ROLLBACK_EVERY == ROLLBACK_EVERY - 1:
                        conn.rollback()
                    else:
                        conn.commit()
                        self.committed.append(int(row[0]))
        except BaseException as exc:  # surfaced by the test
            self.error = exc


class SyncReader(threading.Thread):
    """What a backend's sync() endpoint does, in a loop until stopped."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.snapshots: list[tuple[int, int, set[int]]] = []  # (watermark, MAX(sequence_id), visible ids)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                while not self.stop.is_set():
                    with conn.transaction():
                        watermark = conn.execute("SELECT outbox_sync_sequence_id()").fetchone()
                        top = conn.execute("SELECT COALESCE(max(sequence_id), 0) FROM outbox").fetchone()
                        visible = {int(r[0]) for r in conn.execute("SELECT seq FROM audit")}
                    assert watermark is not None and top is not None
                    self.snapshots.append((int(watermark[0]), int(top[0]), visible))
                    time.sleep(0.003)
        except BaseException as exc:
            self.error = exc


async def test_watermark_never_passes_a_row_the_same_snapshot_cannot_see(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any, pg_dsn: str
) -> None:
    outbox.execute("CREATE TABLE audit (seq BIGINT PRIMARY KEY)")
    async with running(pg_env, CHECKPOINT_INTERVAL_MS="20", GAP_TIMEOUT_MS="60000") as handle:
        writers = [Writer(pg_dsn, seed) for seed in range(WRITERS)]
        reader = SyncReader(pg_dsn)
        reader.start()
        for writer in writers:
            writer.start()
        await until(lambda: not any(w.is_alive() for w in writers), timeout=120, what="the writers")
        committed = sorted(i for w in writers for i in w.committed)
        assert all(w.error is None for w in writers), [w.error for w in writers]
        await wait_delivered(ably, len(committed), timeout=60)
        await until(
            lambda: bool(reader.snapshots) and reader.snapshots[-1][0] >= committed[-1], what="catch-up"
        )
        reader.stop.set()
        await asyncio.to_thread(reader.join, 10)
        assert reader.error is None
        term = handle.term
        assert term is not None and term.reader is not None
        proven = term.reader.stats.gaps_proven
    lost_by_watermark = [
        (seq, wm) for wm, _, seen in reader.snapshots for seq in committed if seq <= wm and seq not in seen
    ]
    lost_by_max = sum(
        1 for _, top, seen in reader.snapshots for seq in committed if seq <= top and seq not in seen
    )
    print(
        f"\n[postgres] sync() snapshots={len(reader.snapshots)} rows={len(committed)} gaps_proven={proven}; "
        f"rows a client would miss: watermark={len(lost_by_watermark)}, MAX(sequence_id)={lost_by_max}"
    )
    assert lost_by_watermark == []
    messages = ably.messages()
    assert sorted(int(m["id"]) for m in messages) == committed
    for channel in {m["channel"] for m in messages}:
        ids = [int(m["id"]) for m in messages if m["channel"] == channel]
        assert ids == sorted(ids), f"order broken on {channel}"
    assert len(reader.snapshots) > 10
