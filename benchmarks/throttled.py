"""`python -m benchmarks.throttled [--events N] [--rate R] [--seconds S]`: busy channels under Ably's
per-channel rate limit (issue 23).

The skewed workload (80 % of the events on one channel, the rest over 99 channels) as a backlog, the Ably
emulator enforcing `--rate` messages/s per channel, the connector paced at the same rate (its default is
Ably's 50/s). Reported, never asserted: how long the 99 quiet channels' events took to arrive, the hot
channel's rate against its limit, rejected requests per delivered message, the connector's peak RSS, and
how much of the hot backlog spilled to the overflow collection. The same run with the connector told there
is no limit (`CHANNEL_RATE_LIMIT=0`, as before pacing existed) shows what it replaces.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from benchmarks import procs
from benchmarks.measure import MIB
from benchmarks.workloads import HOT_CHANNEL, PIPELINE, WORKLOADS, start_at, write_backlog
from emulators.ably.client import AblyEmulatorAdmin

log = logging.getLogger(__name__)

DB = "bench_throttled"
POLL_S = 0.1


def one_run(
    ably: procs.Emulator, events: int, rate: float, seconds: float, connector_rate: float
) -> dict[str, Any]:
    """One connector run over a fresh skewed backlog for `seconds`; the numbers of issue 23."""
    workload = WORKLOADS["skewed"]
    admin = AblyEmulatorAdmin(ably.address)
    admin.reset()
    admin.configure(channel_rate_limit=rate)
    quiet_total = sum(1 for seq in range(events) if workload.channel(seq) != HOT_CHANNEL)
    with procs.mongo_emulator(events * 2 + 10_000) as mongo:
        client: MongoClient[dict[str, Any]] = MongoClient(mongo.address)
        try:
            start = start_at(client)
            write_backlog(client, DB, workload, events)
            env = {
                "MONGODB_URI": mongo.address,
                "MONGODB_DATABASE": DB,
                "MONGODB_COLLECTION": workload.watched_collection,
                "PIPELINE": json.dumps(PIPELINE),
                "ABLY_API_KEY": procs.ABLY_KEY,
                "ABLY_REST_URL": ably.address,
                "ABLY_FALLBACK_HOSTS": "",
                "START_AT": f"Timestamp({start.time}, {start.inc})",
                "CONNECTOR_ID": f"throttled-{os.getpid()}-{connector_rate:g}",
                "CHANNEL_RATE_LIMIT": f"{connector_rate:g}",
                "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "json",
            }
            log_path = Path(tempfile.gettempdir()) / f"livesync-throttled-{os.getpid()}.log"
            with procs.ConnectorProcess(env, log_path) as conn:
                began = time.time()
                quiet_done_at: float | None = None
                while time.time() - began < seconds:
                    stats = admin.stats()
                    channels: dict[str, int] = stats.get("channels", {})
                    quiet = sum(n for ch, n in channels.items() if ch != HOT_CHANNEL)
                    if quiet_done_at is None and quiet >= quiet_total:
                        quiet_done_at = time.time()
                    conn.check_alive()
                    time.sleep(POLL_S)
                stats = admin.stats()
                peak = conn.peak_rss()
                spilled = client[DB]["ably_overflow"].count_documents({})
        finally:
            client.close()
    channels = stats.get("channels", {})
    hot = int(channels.get(HOT_CHANNEL, 0))
    delivered = int(stats["messages_delivered"])
    quiet = delivered - hot
    return {
        "connector_channel_rate_limit": connector_rate,
        "ably_channel_rate_limit": rate,
        "events": events,
        "seconds": seconds,
        "quiet_events": quiet_total,
        "quiet_delivered": quiet,
        "quiet_all_delivered_after_s": round(quiet_done_at - began, 2) if quiet_done_at else None,
        "hot_delivered": hot,
        "hot_rate_per_s": round(hot / seconds, 1),
        "rejected_requests": int(stats.get("rate_limited_requests", 0)),
        "rejected_requests_per_delivered": round(
            int(stats.get("rate_limited_requests", 0)) / max(1, delivered), 4
        ),
        "publish_requests": int(stats.get("publish_requests", 0)),
        "peak_rss_mib": round(peak / MIB, 1),
        "spilled_waiting_at_end": spilled,
    }


def run_all(events: int, rate: float, seconds: float, ably: procs.Emulator) -> list[dict[str, Any]]:
    try:
        return [one_run(ably, events, rate, seconds, connector_rate) for connector_rate in (rate, 0.0)]
    finally:
        AblyEmulatorAdmin(ably.address).reset()  # the limit off again for whatever runs next


def format_report(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "",
        "Busy channels: skewed backlog (80 % on one channel), the Ably emulator's per-channel limit on:",
    ]
    for row in rows:
        paced = "paced" if row["connector_channel_rate_limit"] else "not paced (CHANNEL_RATE_LIMIT=0)"
        quiet = row["quiet_all_delivered_after_s"]
        out.append(
            f"  {paced:>36}: quiet channels all delivered after "
            f"{'n/a' if quiet is None else f'{quiet:.1f} s'} "
            f"({row['quiet_delivered']}/{row['quiet_events']}); "
            f"hot {row['hot_rate_per_s']:.0f}/s (limit {row['ably_channel_rate_limit']:g}); "
            f"rejected requests per delivered {row['rejected_requests_per_delivered']:.3f}; "
            f"peak RSS {row['peak_rss_mib']} MiB; spilled at the end {row['spilled_waiting_at_end']}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throttled", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=50.0, help="the emulator's per-channel limit (msg/s)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with procs.ably_emulator() as ably:
        rows = run_all(args.events, args.rate, args.seconds, ably)
    print("\n".join(format_report(rows)))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
