"""Invariant 11 and invariant 2 under kill -9: a channel far above Ably's per-channel limit (the Ably
emulator enforcing it) beside quiet channels, and Ably refusing a channel's first spec of a request while
publishing later ones. Every change delivered once, in order per channel; quiet channels not held back."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import MongoClient

from tests.e2e.procs import ConnectorProcess
from tests.e2e.test_faults import report, wait_for_all

pytestmark = pytest.mark.e2e

RATE = 200  # messages/s per channel: the emulator's limit and the connector's pacing


class SkewedWriter(threading.Thread):
    """`total` inserts at `rate`/s: every `quiet_every`-th on one of the quiet channels, others on "hot"."""

    def __init__(self, uri: str, db: str, total: int, rate: float, quiet: int, quiet_every: int) -> None:
        super().__init__(daemon=True)
        self.uri, self.db, self.total, self.rate = uri, db, total, rate
        self.quiet, self.quiet_every = quiet, quiet_every
        self.written_at: dict[int, float] = {}
        self.error: BaseException | None = None

    def channel(self, i: int) -> str:
        return f"quiet{(i // self.quiet_every) % self.quiet}" if i % self.quiet_every == 0 else "hot"

    def run(self) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(self.uri)
        try:
            events = client[self.db].events
            started = time.monotonic()
            for start in range(0, self.total, 50):
                docs = [
                    {"_id": i, "seq": i, "ch": self.channel(i)}
                    for i in range(start, min(start + 50, self.total))
                ]
                events.insert_many(docs)
                now = time.time()
                for doc in docs:
                    self.written_at[doc["_id"]] = now
                ahead = (start + 50) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:
            self.error = exc
        finally:
            client.close()


def audit_channels(messages: list[dict[str, Any]], total: int) -> dict[str, list[int]]:
    per_channel: dict[str, list[int]] = defaultdict(list)
    for msg in messages:
        per_channel[msg["channel"]].append(orjson.loads(msg["data"])["fullDocument"]["seq"])
    seqs = sorted(s for items in per_channel.values() for s in items)
    assert seqs == list(range(total)), "lost or duplicated changes"
    for channel, items in per_channel.items():
        assert items == sorted(items), f"order broken on {channel}"
    return per_channel


def run_with_kills(
    env: dict[str, str], writer: threading.Thread, log: Path, kills: int, seed: int
) -> ConnectorProcess:
    """Start a connector, then the writer; kill -9 the connector `kills` times at random moments (each
    must still be running: the connector never exits by itself); return the last one, ready."""
    rng = random.Random(seed)
    first = ConnectorProcess(env, log).start()
    first.wait_ready()
    writer.start()
    for run in range(kills):
        proc = first if run == 0 else ConnectorProcess(env, log).start()
        time.sleep(rng.uniform(1.0, 2.5))
        assert proc.proc is not None and proc.proc.poll() is None, f"connector exited:\n{proc.log_tail()}"
        proc.kill()
    final = ConnectorProcess(env, log).start()
    final.wait_ready(timeout=60)
    return final


def test_hot_channel_over_the_rate_limit_beside_quiet_channels_under_kill_9(
    e2e_env: dict[str, str], sync_db: Any, mongo_uri: str, ably: Any, tmp_path: Path
) -> None:
    total, quiet, quiet_every = 3000, 20, 25
    ably.configure(channel_rate_limit=RATE)
    env = {**e2e_env, "CHANNEL_RATE_LIMIT": str(RATE), "CHANNEL_MAX_BACKLOG": "100", "MAX_IN_FLIGHT": "400"}
    writer = SkewedWriter(mongo_uri, sync_db.name, total, rate=1000, quiet=quiet, quiet_every=quiet_every)
    final = run_with_kills(env, writer, tmp_path / "connector.log", kills=3, seed=23)
    writer.join(120)
    assert writer.error is None, writer.error
    # Quiet changes written after the kills reach Ably within seconds although "hot" has a backlog.
    probe_at = time.time()
    sync_db.events.insert_one({"_id": total, "seq": total, "ch": "probe"})
    deadline = time.monotonic() + 10
    while not ably.messages(channel="probe") and time.monotonic() < deadline:
        time.sleep(0.05)
    probe_latency = time.time() - probe_at
    hot_backlog = total - len(ably.messages(channel="hot")) - total // quiet_every
    # The hot channel drains at its limit while the final connector's memory stays flat.
    peak_rss = final.rss_bytes()
    deadline = time.monotonic() + 120
    while len(ably.messages()) < total + 1 and time.monotonic() < deadline:
        peak_rss = max(peak_rss, final.rss_bytes())
        time.sleep(0.2)
    wait_for_all(ably, total + 1, timeout=5)
    time.sleep(1.0)
    assert final.terminate() == 0
    drained = [m["received_at"] for m in ably.messages(channel="hot") if m["received_at"] >= probe_at * 1000]
    hot_rate = (
        (len(drained) - 1) / ((drained[-1] - drained[0]) / 1000) if len(drained) > RATE else float("nan")
    )
    per_channel = audit_channels([m for m in ably.messages() if m["channel"] != "probe"], total)
    stats = ably.stats()
    rejected_per_message = stats["rate_limited_requests"] / total
    report(
        "hot channel under kill -9",
        total=total,
        hot=len(per_channel["hot"]),
        probe_latency_s=round(probe_latency, 2),
        hot_backlog_at_probe=hot_backlog,
        rejected_requests_per_message=round(rejected_per_message, 4),
        hot_rate_per_s=round(hot_rate, 1),
        peak_rss_mib=round(peak_rss / 2**20, 1),
        duplicates_dropped=stats.get("duplicates_dropped"),
    )
    assert probe_latency < 5.0, "a quiet channel waited behind the hot channel's backlog"
    assert rejected_per_message <= 0.1
    assert RATE * 0.5 <= hot_rate <= RATE * 1.3, "the hot channel drains near its limit, not above it"
    assert peak_rss < 300 * 2**20, "memory stays bounded while the hot backlog waits"


def test_first_spec_refused_later_ones_published_never_reorders_under_kill_9(
    e2e_env: dict[str, str], sync_db: Any, mongo_uri: str, ably: Any, tmp_path: Path
) -> None:
    """The emulator refuses each channel's first spec in a request and publishes its later specs (what
    Ably's independent per-spec publishing allows). Subscribers still see every channel in order."""
    total = 2000
    ably.inject_fault(mode="partial", entries=[0], code=42913, duration_s=8)
    env = {**e2e_env, "CHANNEL_RATE_LIMIT": str(RATE)}
    writer = SkewedWriter(mongo_uri, sync_db.name, total, rate=400, quiet=5, quiet_every=2)
    final = run_with_kills(env, writer, tmp_path / "connector.log", kills=2, seed=2)
    writer.join(120)
    assert writer.error is None, writer.error
    wait_for_all(ably, total, timeout=120)
    time.sleep(1.0)
    assert final.terminate() == 0
    audit_channels(ably.messages(), total)
    report("first spec refused, under kill -9", total=total, faults_served=ably.stats().get("faults_served"))
