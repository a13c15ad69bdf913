"""`python -m benchmarks.partitions [--events N] [--partitions 1,2,4]`: partitioned connectors (issue 21).

One uniform backlog (1 KiB documents, 100 channels) is replayed from the same START_AT by `PARTITIONS=N`
connector processes at once (`PARTITION=0..N-1`, a fresh CONNECTOR_ID per run), for N = 1 (the
single-process connector, today's documents), 2 and 4, on this one machine. Reported, never asserted:
total events/s (spawn of the first process to the last message at the Ably emulator) and steady events/s
(first message to last), the connectors' CPU seconds together, and the load on the emulated server: the
MongoDB emulator's CPU seconds during the run, in all and per 10k events delivered. Every partition's
change stream reads the whole oplog and evaluates the pipeline for every event on the server, so the
server's work grows with N; the emulator, the Ably emulator and the N connectors share the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from benchmarks import procs
from benchmarks.measure import MIB, PER_CPU_EVENTS
from benchmarks.workloads import PIPELINE, WORKLOADS, start_at, write_backlog
from emulators.ably.client import AblyEmulatorAdmin

log = logging.getLogger(__name__)

DB = "bench_partitions"
POLL_S = 0.02
RUN_TIMEOUT_S = 1800.0
LAYOUTS = (1, 2, 4)


def one_run(
    ably: procs.Emulator, mongo: procs.Emulator, start: str, events: int, count: int
) -> dict[str, Any]:
    """`count` partitions replaying the backlog together; their numbers."""
    admin = AblyEmulatorAdmin(ably.address)
    admin.reset()
    admin.configure(latency_ms=0.0)
    log_path = Path(tempfile.gettempdir()) / f"livesync-bench-{os.getpid()}-partitions.log"
    env = {
        "MONGODB_URI": mongo.address,
        "MONGODB_DATABASE": DB,
        "MONGODB_COLLECTION": WORKLOADS["uniform"].watched_collection,
        "PIPELINE": json.dumps(PIPELINE),
        "ABLY_API_KEY": procs.ABLY_KEY,
        "ABLY_REST_URL": ably.address,
        "ABLY_FALLBACK_HOSTS": "",
        "START_AT": start,
        "CONNECTOR_ID": f"partitions-{os.getpid()}-{count}",
        "CHANNEL_RATE_LIMIT": "0",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "PARTITIONS": str(count),
    }
    mongo_before, ably_before = mongo.cpu_seconds(), ably.cpu_seconds()
    with contextlib.ExitStack() as stack:
        conns = [
            stack.enter_context(procs.ConnectorProcess({**env, "PARTITION": str(k)}, log_path))
            for k in range(count)
        ]
        spawned = min(c.started_at for c in conns)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        first_seen = 0.0
        while True:
            delivered = int(admin.stats()["messages_delivered"])
            if delivered and not first_seen:
                first_seen = time.time()
            if delivered >= events:
                break
            for conn in conns:
                conn.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {delivered}/{events} after {RUN_TIMEOUT_S}s; see {log_path}")
            time.sleep(POLL_S)
        last = max(float(m["received_at"]) for m in admin.messages(since=events - 1)) / 1000
        stats = admin.stats()
        connectors_cpu = sum(c.cpu_seconds() for c in conns)
        peak_rss = max(c.peak_rss() for c in conns)
    mongo_cpu = mongo.cpu_seconds() - mongo_before
    per = PER_CPU_EVENTS / events
    return {
        "partitions": count,
        "events": events,
        "events_per_s": events / (last - spawned),
        "steady_per_s": events / max(1e-9, last - first_seen),
        "seconds": last - spawned,
        "connectors_cpu_s": connectors_cpu,
        "connectors_cpu_per_10k_s": connectors_cpu * per,
        "mongo_emulator_cpu_s": mongo_cpu,
        "mongo_emulator_cpu_per_10k_s": mongo_cpu * per,
        "ably_emulator_cpu_per_10k_s": (ably.cpu_seconds() - ably_before) * per,
        "peak_rss_mib_per_connector": peak_rss / MIB,
        "duplicates_dropped": int(stats["duplicates_dropped"]),
        "load_avg_1m": os.getloadavg()[0],
    }


def run_all(events: int, ably: procs.Emulator, layouts: tuple[int, ...] = LAYOUTS) -> dict[str, Any]:
    """One backlog, replayed by each layout in turn."""
    with procs.mongo_emulator(events * 2 + 10_000) as mongo:
        client: MongoClient[dict[str, Any]] = MongoClient(mongo.address)
        try:
            ts = start_at(client)
            write_backlog(client, DB, WORKLOADS["uniform"], events)
        finally:
            client.close()
        start = f"Timestamp({ts.time}, {ts.inc})"
        runs = []
        for count in layouts:
            runs.append(one_run(ably, mongo, start, events, count))
            log.info("%s", format_row(runs[-1], runs[0]))
    AblyEmulatorAdmin(ably.address).reset()
    return {"events": events, "workload": "uniform", "runs": runs}


def format_row(run: dict[str, Any], single: dict[str, Any]) -> str:
    return (
        f"{run['partitions']:>10} {run['events_per_s']:>9,.0f} {run['steady_per_s']:>9,.0f} "
        f"{run['events_per_s'] / single['events_per_s']:>7.2f} {run['connectors_cpu_per_10k_s']:>9.2f} "
        f"{run['mongo_emulator_cpu_s']:>9.1f} {run['mongo_emulator_cpu_per_10k_s']:>10.2f} "
        f"{run['mongo_emulator_cpu_per_10k_s'] / single['mongo_emulator_cpu_per_10k_s']:>8.2f}"
    )


def format_report(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    return [
        "",
        f"Partitioned connectors: {report['events']:,} uniform events replayed by PARTITIONS=N processes "
        "at once (Ably at 0 ms; N=1 is the single-process connector):",
        "partitions  events/s  steady/s  vs N=1  conn CPU/10k  mongo CPU s  mongo /10k  vs N=1",
        *(format_row(run, runs[0]) for run in runs),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--partitions", default=",".join(str(n) for n in LAYOUTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    layouts = tuple(int(n) for n in args.partitions.split(","))
    with procs.ably_emulator() as ably:
        report = run_all(args.events, ably, layouts)
    print("\n".join(format_report(report)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
