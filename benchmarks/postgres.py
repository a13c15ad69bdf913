"""`python -m benchmarks.postgres [--quick]`: the Postgres outbox source, on a real PostgreSQL.

Also run by `make bench` (`benchmarks/run.py`, part `postgres`), which prints these rows after the
MongoDB ones. Three parts, each against a throwaway PostgreSQL (emulators/postgres) and the Ably
emulator, every process its own interpreter on the machine's shared cores:

- **throughput**: a backlog of rows (~300-byte JSON `data`, 100 channels) is inserted before any relay
  starts; the connector (`python -m connector run`, SOURCE=postgres, defaults) and a naive relay
  (`benchmarks/postgres_naive.py`: poll, one POST per row, mark processed) each publish the same rows
  (identical tables), with the Ably emulator answering at once and 20 ms later. Rows/s is counted from
  the first message Ably received to the last; the naive relay runs on a prefix. `conn-live` is insert
  → Ably: the connector is running and one writer inserts the rows as fast as it can (1,000 per
  transaction); rows/s = rows / (last message received - first INSERT sent).
- **latency**: the connector under live inserts at 1,000 rows/s (10 rows per transaction every 10 ms);
  latency = Ably's `received_at` minus the moment the insert's COMMIT returned.
- **gaps**: how long a gap delays a committed row above it: a transaction draws an id and stays open, a
  later row commits, then the first transaction rolls back (a permanent gap) or commits (commit order);
  delay = Ably's `received_at` of the later row minus the moment of that ROLLBACK/COMMIT.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from benchmarks import procs
from benchmarks.measure import percentile
from connector.sources.postgres.db import connect
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.schema import create_tables
from emulators.ably import AblyEmulatorAdmin
from emulators.postgres import PostgresServer, running_postgres

log = logging.getLogger("benchmarks.postgres")

CHANNELS = 100
PAYLOAD = 256
SLOW_ABLY_MS = 20.0
LIVE_RATE = 1000.0
LIVE_TICK_S = 0.01
BURST_BATCH = 1000
GAP_TRIALS = 20
#: A gap trial holds the first transaction open this long before ending it, so the reader has seen the gap.
GAP_HOLD_S = 0.15
RUN_TIMEOUT_S = 900.0
POLL_S = 0.02
TARGET_RATE_0MS = 10_000.0
TARGET_VS_NAIVE_20MS = 100.0
TARGET_P99_MS = 50.0


class Bench:
    def __init__(self, pg: PostgresServer, ably: procs.Emulator, quick: bool) -> None:
        self.pg = pg
        self.dsn = pg.uri
        self.ably = ably
        self.admin = AblyEmulatorAdmin(ably.address)
        self.quick = quick
        self.log_path = Path(tempfile.gettempdir()) / "livesync-bench-postgres-connector.log"
        self._tables = 0

    # -- helpers ------------------------------------------------------------------------------------

    def fresh_ably(self, latency_ms: float) -> None:
        self.admin.reset()
        self.admin.configure(latency_ms=latency_ms)

    def new_outbox(self) -> str:
        self._tables += 1
        name = f"outbox_{self._tables}"

        async def make() -> None:
            conn = await connect(self.dsn, purpose="bench")
            try:
                names = OutboxNames.from_settings(f"public.{name}", f"public.{name}_nodes")
                await create_tables(conn, names, lambda _: None)
            finally:
                await conn.close()

        asyncio.run(make())
        return name

    def fill(self, table: str, rows: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (mutation_id, channel, name, data) SELECT 'm' || g, 'ch' || (g %% %s), "
                    "'row', jsonb_build_object('seq', g, 'payload', repeat('x', %s)) "
                    "FROM generate_series(0, %s - 1) AS g"
                ).format(sql.Identifier(table)),
                [CHANNELS, PAYLOAD, rows],
            )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))

    def env(self, table: str, **extra: str) -> dict[str, str]:
        return {
            "SOURCE": "postgres",
            "POSTGRES_URI": self.dsn,
            "OUTBOX_TABLE": f"public.{table}",
            "NODES_TABLE": f"public.{table}_nodes",
            "ABLY_API_KEY": procs.ABLY_KEY,
            "ABLY_REST_URL": self.ably.address,
            "ABLY_FALLBACK_HOSTS": "",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "CHANNEL_RATE_LIMIT": "0",  # the Ably emulator has no per-channel limit in these runs
            **extra,
        }

    def wait_delivered(self, conn: procs.ConnectorProcess, count: int) -> float:
        """Wall time at which the first message was seen (polling the emulator)."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        first = 0.0
        while True:
            delivered = int(self.admin.stats()["messages_delivered"])
            if delivered and not first:
                first = time.time()
            if delivered >= count:
                return first
            conn.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {delivered}/{count} after {RUN_TIMEOUT_S}s; see {conn.log_path}")
            time.sleep(POLL_S)

    # -- throughput ---------------------------------------------------------------------------------

    def connector_run(self, rows: int, latency_ms: float) -> dict[str, Any]:
        table = self.new_outbox()
        self.fill(table, rows)
        self.fresh_ably(latency_ms)
        with procs.ConnectorProcess(self.env(table), self.log_path) as conn:
            first_seen = self.wait_delivered(conn, rows)
            cpu = conn.cpu_seconds()
            last = max(float(m["received_at"]) for m in self.admin.messages(since=rows - 1)) / 1000
            first = float(self.admin.messages()[0]["received_at"]) / 1000 if rows <= 20_000 else first_seen
            stats = self.admin.stats()
        return {
            "reader": "connector",
            "ably_ms": latency_ms,
            "rows": rows,
            "rate": rows / max(last - first, 1e-9),
            "from_spawn_rate": rows / max(last - conn.started_at, 1e-9),
            "cpu_per_10k_s": cpu / rows * 10_000,
            "requests": int(stats["publish_requests"]),
            "duplicates_dropped": int(stats["duplicates_dropped"]),
        }

    def burst_run(self, rows: int, latency_ms: float) -> dict[str, Any]:
        """Insert → Ably: the connector is up; rows are inserted as fast as one writer can (BURST_BATCH
        rows per transaction); rate = rows / (last message received - first INSERT sent)."""
        table = self.new_outbox()
        self.fresh_ably(latency_ms)
        insert = insert_range(table)
        with procs.ConnectorProcess(self.env(table), self.log_path) as conn:
            conn.wait_ready()
            cpu_before = conn.cpu_seconds()
            with psycopg.connect(self.dsn, autocommit=True) as app:
                began = time.time()
                for first in range(0, rows, BURST_BATCH):
                    app.execute(insert, [CHANNELS, PAYLOAD, first, min(rows, first + BURST_BATCH) - 1])
                inserted = time.time() - began
            self.wait_delivered(conn, rows)
            cpu = conn.cpu_seconds() - cpu_before
            last = max(float(m["received_at"]) for m in self.admin.messages(since=rows - 1)) / 1000
            stats = self.admin.stats()
        return {
            "reader": "conn-live",
            "ably_ms": latency_ms,
            "rows": rows,
            "rate": rows / max(last - began, 1e-9),
            "from_spawn_rate": None,
            "cpu_per_10k_s": cpu / rows * 10_000,
            "requests": int(stats["publish_requests"]),
            "duplicates_dropped": int(stats["duplicates_dropped"]),
            "insert_rate": rows / inserted,
        }

    def naive_run(self, rows: int, latency_ms: float) -> dict[str, Any]:
        table = self.new_outbox()
        self.fill(table, rows)
        self.fresh_ably(latency_ms)
        command = [
            sys.executable, "-m", "benchmarks.postgres_naive", "--dsn", self.dsn, "--table", table,
            "--rows", str(rows), "--ably-url", self.ably.address, "--key", procs.ABLY_KEY,
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=procs.ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"naive relay failed:\n{done.stderr[-2000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        rate = (out["rows"] - 1) / max(out["last_at"] - out["first_at"], 1e-9)
        return {
            "reader": "naive",
            "ably_ms": latency_ms,
            "rows": out["rows"],
            "rate": rate,
            "from_spawn_rate": None,
            "cpu_per_10k_s": out["cpu_s"] / out["rows"] * 10_000,
            "requests": out["rows"],
            "duplicates_dropped": 0,
        }

    def throughput(self) -> list[dict[str, Any]]:
        backlog = 10_000 if self.quick else 50_000
        naive = {0.0: 500 if self.quick else 2_000, SLOW_ABLY_MS: 100 if self.quick else 300}
        rows = []
        for latency in (0.0, SLOW_ABLY_MS):
            rows.append(self.naive_run(naive[latency], latency))
            log.info("%s", format_row(rows[-1]))
            rows.append(self.connector_run(backlog, latency))
            log.info("%s", format_row(rows[-1]))
            rows.append(self.burst_run(backlog, latency))
            log.info("%s", format_row(rows[-1]))
        return rows

    # -- latency ------------------------------------------------------------------------------------

    def latency(self) -> dict[str, Any]:
        seconds = 4.0 if self.quick else 15.0
        table = self.new_outbox()
        self.fresh_ably(0.0)
        with procs.ConnectorProcess(self.env(table), self.log_path) as conn:
            conn.wait_ready()
            writer = LiveWriter(self.dsn, table, LIVE_RATE, seconds)
            writer.start()
            writer.join(seconds + 60)
            if writer.error is not None:
                raise RuntimeError(f"live writer failed: {writer.error!r}")
            self.wait_delivered(conn, writer.written)
        messages = self.admin.messages()
        latencies = [
            float(m["received_at"]) - writer.committed_at[int(orjson.loads(m["data"])["seq"])] * 1000
            for m in messages
        ]
        return {
            "target_rate": LIVE_RATE, "achieved_rate": writer.written / seconds, "rows": writer.written,
            "delivered": len(messages), **summary(latencies),
        }  # fmt: skip

    # -- gaps ---------------------------------------------------------------------------------------

    def gaps(self) -> dict[str, Any]:
        table = self.new_outbox()
        self.fresh_ably(0.0)
        trials = 5 if self.quick else GAP_TRIALS
        delays: dict[str, list[float]] = {"no gap": [], "rolled back": [], "committed later": []}
        with procs.ConnectorProcess(self.env(table), self.log_path) as conn, psycopg.connect(self.dsn) as app:
            conn.wait_ready()
            app.autocommit = True
            with psycopg.connect(self.dsn) as holder:
                for _ in range(trials):
                    for kind in delays:
                        delays[kind].append(self.gap_trial(app, holder, table, kind))
        return {kind: summary(values) for kind, values in delays.items()}

    def gap_trial(
        self, app: psycopg.Connection[Any], holder: psycopg.Connection[Any], table: str, kind: str
    ) -> float:
        insert = sql.SQL(
            "INSERT INTO {} (mutation_id, channel, name, data) VALUES ('g', 'gaps', 'row', '{{}}') "
            "RETURNING sequence_id"
        ).format(sql.Identifier(table))
        if kind != "no gap":
            holder.execute(insert)  # draws an id, stays open
        row = app.execute(insert).fetchone()
        assert row is not None
        later = str(row[0])
        time.sleep(GAP_HOLD_S)
        ended_at = time.time()
        if kind == "rolled back":
            holder.rollback()
        elif kind == "committed later":
            holder.commit()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [m for m in self.admin.messages(channel="gaps") if m["id"] == later]
            if found:
                start = ended_at if kind != "no gap" else ended_at - GAP_HOLD_S
                return float(found[0]["received_at"]) - start * 1000
            time.sleep(0.005)
        raise RuntimeError(f"row {later} not delivered within 30 s ({kind})")


class LiveWriter(threading.Thread):
    """Inserts what is due every LIVE_TICK_S in one transaction; records when each COMMIT returned."""

    def __init__(self, dsn: str, table: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table, self.rate, self.seconds = dsn, table, rate, seconds
        self.written = 0
        self.committed_at: dict[int, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            insert = insert_range(self.table)
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                began = next_tick = time.monotonic()
                target = int(self.rate * self.seconds)
                while self.written < target:
                    due = min(target, int((time.monotonic() - began) * self.rate))
                    if due > self.written:
                        conn.execute(insert, [CHANNELS, PAYLOAD, self.written, due - 1])
                        now = time.time()
                        for seq in range(self.written, due):
                            self.committed_at[seq] = now
                        self.written = due
                    next_tick += LIVE_TICK_S
                    time.sleep(max(0.0, next_tick - time.monotonic()))
        except BaseException as exc:  # reported by the run
            self.error = exc


def insert_range(table: str) -> sql.Composed:
    """INSERT rows seq = $3..$4 (channel ch<seq % $1>, a $2-byte payload) in one statement."""
    return sql.SQL(
        "INSERT INTO {} (mutation_id, channel, name, data) SELECT 'm' || g, 'ch' || (g %% %s), 'row', "
        "jsonb_build_object('seq', g, 'payload', repeat('x', %s)) "
        "FROM generate_series(%s::int, %s::int) AS g"
    ).format(sql.Identifier(table))


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else None,
    }


def format_row(row: dict[str, Any]) -> str:
    spawn = f"{row['from_spawn_rate']:,.0f}" if row["from_spawn_rate"] else "-"
    return (
        f"{row['reader']:<10} {row['ably_ms']:>7g} {row['rows']:>8,} {row['rate']:>10,.0f} {spawn:>12} "
        f"{row['cpu_per_10k_s']:>9.2f} {row['requests']:>9,}"
    )


def format_report(report: dict[str, Any]) -> list[str]:
    out = ["", "Postgres outbox (real PostgreSQL 15; rows/s from first to last message Ably received):"]
    head = (
        f"{'relay':<10} {'Ably ms':>7} {'rows':>8} {'rows/s':>10} {'from spawn':>12} "
        f"{'CPU s/10k':>9} {'requests':>9}"
    )
    out += [head, "-" * len(head)]
    out += [format_row(row) for row in report["throughput"]]
    lat = report["latency"]
    out += [
        "",
        f"Live inserts at {lat['target_rate']:,.0f} rows/s (achieved {lat['achieved_rate']:,.0f}), "
        "commit→Ably: "
        f"p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
        f"max {lat['max_ms']:.1f} ms ({lat['delivered']:,} of {lat['rows']:,} delivered)",
        "",
        "How long a gap delays the committed row above it (end of the blocking transaction → Ably):",
    ]
    for kind, s in report["gaps"].items():
        out.append(f"  {kind:<16} p50 {s['p50_ms']:6.1f} ms   max {s['max_ms']:6.1f} ms   ({s['n']} trials)")
    out += ["", "Targets (reported, not asserted):"]
    out += [
        f"  {t['target']:<48} {t['value']:>10,.1f}  goal {t['goal']:<8} {t['verdict']}"
        for t in report["targets"]
    ]
    return out


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {(r["reader"], r["ably_ms"]): r for r in report["throughput"]}
    fast = rows[("conn-live", 0.0)]["rate"]
    ratio = rows[("connector", SLOW_ABLY_MS)]["rate"] / rows[("naive", SLOW_ABLY_MS)]["rate"]
    p99 = report["latency"]["p99_ms"]
    items = [
        ("rows/s insert→Ably at 0 ms", fast, f">={TARGET_RATE_0MS:,.0f}", fast >= TARGET_RATE_0MS),
        ("connector / naive at 20 ms", ratio, f">={TARGET_VS_NAIVE_20MS:g}x", ratio >= TARGET_VS_NAIVE_20MS),
        ("p99 commit→Ably at 1,000 rows/s (ms)", p99, f"<{TARGET_P99_MS:g}", p99 < TARGET_P99_MS),
    ]
    return [
        {"target": t, "value": v, "goal": g, "verdict": "met" if ok else "MISSED"} for t, v, g, ok in items
    ]


@contextlib.contextmanager
def environment(ably: procs.Emulator | None = None) -> Iterator[tuple[PostgresServer, procs.Emulator]]:
    with running_postgres() as pg, contextlib.ExitStack() as stack:
        yield pg, ably if ably is not None else stack.enter_context(procs.ably_emulator())


def run_all(quick: bool, ably: procs.Emulator | None = None) -> dict[str, Any]:
    """Every part; `ably` reuses a running emulator (benchmarks/run.py passes its own)."""
    with environment(ably) as (pg, emulator):
        bench = Bench(pg, emulator, quick)
        report: dict[str, Any] = {
            "throughput": bench.throughput(),
            "latency": bench.latency(),
            "gaps": bench.gaps(),
        }
        bench.admin.reset()
    report["targets"] = targets(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small backlogs and short runs (about a minute)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run_all(args.quick)
    print("\n".join(format_report(report)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
