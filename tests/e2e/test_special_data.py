"""Invariant 10 under kill -9: documents production holds (out-of-range dates, invalid UTF-8, changes over
Ably's size, updates of 9 MiB documents whose events the server splits, events with no channel) mixed into
thousands of ordinary changes, with the connector killed a few times.

Every ordinary change is delivered once and in order per channel; every special one is delivered
(decoded), truncated or dead-lettered, once; no connector process ever exits by itself.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
from bson import DatetimeMS
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from tests.e2e.test_busy_channels import run_with_kills
from tests.e2e.test_faults import report, wait_for_all

pytestmark = pytest.mark.e2e

YEAR_10000_MS = 253402300800000 + 1000
NINE_MIB = 9 * 1024 * 1024


def special_docs(k: int, channel: str) -> tuple[str, Any, str]:
    """The k-th special write: (kind, what to insert or update, expected outcome)."""
    key = f"special-{k}"
    kind = ("date", "utf8", "oversize", "nochannel", "split")[k % 5]
    if kind == "date":
        return kind, {"_id": key, "ch": channel, "at": DatetimeMS(YEAR_10000_MS + k)}, "delivered"
    if kind == "utf8":
        raw = bson.encode({"_id": key, "ch": channel, "name": "abc"}).replace(b"abc", b"a\xffc")
        return kind, RawBSONDocument(raw), "delivered"
    if kind == "oversize":
        return kind, {"_id": key, "ch": channel, "blob": "x" * 80_000}, "truncated"
    if kind == "nochannel":
        return kind, {"_id": key, "blob": "no ch field"}, "deadlettered"
    return kind, key, "split"


class MixedWriter(threading.Thread):
    """Ordinary documents `{_id: i, seq: i, ch}` at `rate`/s, with a special write every `every` of them."""

    def __init__(self, uri: str, db: str, total: int, channels: int, rate: float, every: int) -> None:
        super().__init__(daemon=True)
        self.uri, self.db = uri, db
        self.total, self.channels, self.rate, self.every = total, channels, rate, every
        self.specials: dict[str, tuple[str, str]] = {}  # key -> (kind, expected outcome)
        self.error: BaseException | None = None

    def run(self) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(self.uri, datetime_conversion="DATETIME_AUTO")
        try:
            events = client[self.db].events
            started = time.monotonic()
            for i in range(self.total):
                events.insert_one({"_id": i, "seq": i, "ch": f"ch{i % self.channels}"})
                if i % self.every == self.every - 1:
                    self._special(events, len(self.specials), f"ch{i % self.channels}")
                ahead = (i + 1) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            client.close()

    def _special(self, events: Any, k: int, channel: str) -> None:
        kind, doc, outcome = special_docs(k, channel)
        if kind == "split":
            events.insert_one({"_id": doc, "ch": channel, "blob": "x" * NINE_MIB})
            events.update_one({"_id": doc}, {"$set": {"touched": k}})
            self.specials[doc] = (kind, "truncated")  # the 9 MiB insert is truncated too
            self.specials[doc + "/update"] = (kind, "split")
            return
        events.insert_one(doc)
        key = doc["_id"] if isinstance(doc, dict) else f"special-{k}"
        self.specials[key] = (kind, outcome)


def test_special_documents_mixed_into_a_stream_under_kill_9(
    e2e_env: dict[str, str], sync_db: Any, mongo_uri: str, ably: Any, tmp_path: Path
) -> None:
    total, channels, kills, every = 4000, 20, 4, 150
    sync_db.create_collection("events", changeStreamPreAndPostImages={"enabled": True})
    env = {
        **e2e_env,
        "FULL_DOCUMENT": "whenAvailable",
        "FULL_DOCUMENT_BEFORE_CHANGE": "whenAvailable",
    }
    writer = MixedWriter(mongo_uri, sync_db.name, total, channels, rate=600, every=every)
    final = run_with_kills(env, writer, tmp_path / "connector.log", kills=kills, seed=20261206)
    writer.join(180)
    assert writer.error is None, writer.error
    specials = writer.specials
    dead_expected = sum(1 for _, outcome in specials.values() if outcome == "deadlettered")
    wait_for_all(ably, total + len(specials) - dead_expected)
    time.sleep(1.0)  # anything still in flight would show up as a duplicate now
    assert final.proc is not None and final.proc.poll() is None, f"connector exited:\n{final.log_tail()}"
    assert final.terminate() == 0

    messages = ably.messages()
    ordinary: dict[str, list[tuple[str, int]]] = defaultdict(list)
    seen: dict[str, int] = defaultdict(int)
    outcomes: dict[str, str] = {}
    for msg in messages:
        event = orjson.loads(msg["data"])
        key = event["documentKey"]["_id"]
        headers = (msg.get("extras") or {}).get("headers", {})
        if isinstance(key, int):
            seen[str(key)] += 1
            ordinary[msg["channel"]].append((msg["id"], key))
            continue
        name = key + "/update" if event["operationType"] == "update" else key
        seen[name] += 1
        outcomes[name] = "truncated" if headers.get("x-livesync-truncated") == "true" else "delivered"
    assert not [k for k, n in seen.items() if n > 1], "duplicates delivered"
    assert sorted(int(k) for k in seen if k.isdigit()) == list(range(total)), "ordinary changes lost"
    for channel, items in ordinary.items():
        assert [s for _, s in items] == sorted(s for _, s in items), f"order broken on {channel}"
        assert [i for i, _ in items] == sorted(i for i, _ in items), f"ids out of order on {channel}"
    for key, (kind, outcome) in specials.items():
        if outcome == "deadlettered":
            assert sync_db.ably_deadletter.count_documents({"event.documentKey._id": key}) == 1, key
        elif outcome == "split":
            assert outcomes.get(key) == "truncated", (key, kind)  # reassembled, then over 64 KiB
        else:
            assert outcomes.get(key) == outcome, (key, kind)
    report(
        "special data, kill -9",
        ordinary=total,
        specials=len(specials),
        kills=kills,
        delivered=len(messages),
        duplicates_dropped_by_ably=ably.stats().get("duplicates_dropped"),
    )
