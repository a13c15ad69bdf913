"""A paced outbox writer that survives PostgreSQL restarts, and the delivery audit of the fault tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

#: How long the writer keeps retrying while PostgreSQL is away (a restart takes about a second).
WRITE_RETRY_S = 60.0
BATCH = 10


class OutboxWriter(threading.Thread):
    """Inserts rows `seq` 0..total-1 (`data = {"seq": i}`, channel `ch<i % channels>`, mutation_id
    `w<i>`) in transactions of BATCH rows at about `rate` rows/s, like an application would: a batch
    whose commit was interrupted is looked up by mutation_id before it is written again."""

    def __init__(self, dsn: str, total: int, channels: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.total = total
        self.channels = channels
        self.rate = rate
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            conn: psycopg.Connection[Any] | None = None
            for first in range(0, self.total, BATCH):
                seqs = list(range(first, min(first + BATCH, self.total)))
                conn = self._write(conn, seqs)
                self.written += len(seqs)
                ahead = self.written / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if conn is not None:
                conn.close()
        except BaseException as exc:  # surfaced through `.error`
            self.error = exc

    def _write(self, conn: psycopg.Connection[Any] | None, seqs: list[int]) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + WRITE_RETRY_S
        while True:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, connect_timeout=2)
                with conn.transaction():
                    done = conn.execute(
                        "SELECT count(*) FROM outbox_audit WHERE seq = %s", [seqs[0]]
                    ).fetchone()
                    if done and done[0]:
                        return conn  # the interrupted commit had gone through
                    for seq in seqs:
                        conn.execute(
                            "INSERT INTO outbox (mutation_id, channel, name, data) "
                            "VALUES (%s, %s, 'row', %s)",
                            [f"w{seq}", f"ch{seq % self.channels}", orjson.dumps({"seq": seq}).decode()],
                        )
                    conn.execute("INSERT INTO outbox_audit (seq) SELECT unnest(%s::int[])", [seqs])
                return conn
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)


def create_audit(conn: psycopg.Connection[Any]) -> None:
    """The writer's own record of what committed (never deleted, unlike outbox rows)."""
    conn.execute("CREATE TABLE outbox_audit (seq INT PRIMARY KEY)")


@dataclass
class Audit:
    delivered: int
    lost: list[int]
    duplicates: int
    out_of_order_channels: list[str]

    def assert_perfect(self) -> None:
        assert self.lost == [], f"{len(self.lost)} rows lost, first {self.lost[:10]}"
        assert self.duplicates == 0, f"{self.duplicates} duplicates delivered"
        assert self.out_of_order_channels == [], f"order broken on {self.out_of_order_channels[:5]}"


def audit(messages: list[dict[str, Any]], total: int) -> Audit:
    """Every seq once, and each channel's messages in increasing sequence_id and seq."""
    seqs = [int(orjson.loads(m["data"])["seq"]) for m in messages]
    counts = Counter(seqs)
    by_channel: dict[str, list[tuple[int, int]]] = {}
    for msg, seq in zip(messages, seqs, strict=True):
        by_channel.setdefault(msg["channel"], []).append((int(msg["id"]), seq))
    broken = [ch for ch, items in by_channel.items() if items != sorted(items)]
    return Audit(
        delivered=len(messages),
        lost=[i for i in range(total) if i not in counts],
        duplicates=sum(n - 1 for n in counts.values() if n > 1)
        + len(messages)
        - len({m["id"] for m in messages}),
        out_of_order_channels=sorted(broken),
    )
