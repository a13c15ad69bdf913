"""What is written: the three workloads, the backlog writer, and the paced live writer.

Every document carries its channel in field `ch` and its sequence number in `seq`; all readers use the
same server-side pipeline (`$set` `_ablyChannel` from `ch`), so they ask the server for the same work.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import bson
from bson.timestamp import Timestamp
from pymongo import MongoClient

DOC_BYTES = 1024
CHANNELS = 100
#: The skewed workload sends every event whose seq is not a multiple of 5 (80 %) to this channel.
HOT_CHANNEL = "ch0"
SKEW_PERIOD = 5
DB_WIDE_COLLECTIONS = 10
#: insert_many batch: big enough to write fast, small enough that a database-wide backlog interleaves
#: its collections finely.
BACKLOG_BATCH = 500
#: The live writer wakes every 10 ms and writes what is due, so a 1k/s run writes ~10 documents a tick.
LIVE_TICK_S = 0.01
PIPELINE: list[dict[str, Any]] = [{"$set": {"_ablyChannel": "$fullDocument.ch"}}]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    collections: tuple[str, ...]
    database_wide: bool = False
    skewed: bool = False

    def channel(self, seq: int) -> str:
        if self.skewed:
            return HOT_CHANNEL if seq % SKEW_PERIOD else f"ch{(seq // SKEW_PERIOD) % (CHANNELS - 1) + 1}"
        return f"ch{seq % CHANNELS}"

    def collection_of_batch(self, batch_no: int) -> str:
        return self.collections[batch_no % len(self.collections)]

    @property
    def watched_collection(self) -> str:
        """What MONGODB_COLLECTION is set to: empty for a database-wide watch."""
        return "" if self.database_wide else self.collections[0]


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("uniform", f"1 KiB docs, {CHANNELS} channels round-robin", ("items",)),
        Workload(
            "skewed", f"1 KiB docs, 80 % on {HOT_CHANNEL}, rest over 99 channels", ("items",), skewed=True
        ),
        Workload(
            "dbwide",
            f"1 KiB docs, database-wide watch over {DB_WIDE_COLLECTIONS} collections, {CHANNELS} channels",
            tuple(f"c{i}" for i in range(DB_WIDE_COLLECTIONS)),
            database_wide=True,
        ),
    )
}


def _padding_for(template: dict[str, Any]) -> str:
    """A payload that makes documents shaped like `template` encode to DOC_BYTES of BSON."""
    base = len(bson.encode({**template, "payload": ""}))
    return "x" * max(0, DOC_BYTES - base)


def make_docs(
    workload: Workload, first: int, count: int, stamp_ms: float | None = None
) -> list[dict[str, Any]]:
    template = {"_id": first, "seq": first, "ch": workload.channel(first), "t": stamp_ms or 0.0}
    payload = _padding_for(template)
    docs = []
    for seq in range(first, first + count):
        doc: dict[str, Any] = {"_id": seq, "seq": seq, "ch": workload.channel(seq), "payload": payload}
        doc["t"] = stamp_ms if stamp_ms is not None else 0.0
        docs.append(doc)
    return docs


def start_at(client: MongoClient[dict[str, Any]]) -> Timestamp:
    """The cluster's operation time now: a START_AT from which every later write is replayed."""
    reply = client.admin.command("ping")
    ts = reply.get("operationTime") or reply["$clusterTime"]["clusterTime"]
    assert isinstance(ts, Timestamp)
    return ts


def write_backlog(client: MongoClient[dict[str, Any]], db_name: str, workload: Workload, total: int) -> float:
    """Insert `total` documents into a fresh database; returns the documents written per second."""
    client.drop_database(db_name)
    db = client[db_name]
    began = time.perf_counter()
    for batch_no, first in enumerate(range(0, total, BACKLOG_BATCH)):
        docs = make_docs(workload, first, min(BACKLOG_BATCH, total - first))
        db[workload.collection_of_batch(batch_no)].insert_many(docs, ordered=True)
    return total / (time.perf_counter() - began)


class LiveWriter(threading.Thread):
    """Writes at a steady `rate` for `duration_s`, stamping each document with the wall time (ms) of its
    insert call; records what it actually achieved (at 5k/s the emulator and writer may fall short)."""

    def __init__(
        self,
        client: MongoClient[dict[str, Any]],
        db_name: str,
        workload: Workload,
        rate: float,
        duration_s: float,
    ) -> None:
        super().__init__(name=f"live-writer-{rate:g}", daemon=True)
        self.collection = client[db_name][workload.collections[0]]
        self.workload = workload
        self.rate = rate
        self.duration_s = duration_s
        self.written = 0
        self.elapsed_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            began = next_tick = time.monotonic()
            target = int(self.rate * self.duration_s)
            while self.written < target:
                due = min(target, int((time.monotonic() - began) * self.rate))
                if due > self.written:
                    docs = make_docs(
                        self.workload, self.written, due - self.written, stamp_ms=time.time() * 1000
                    )
                    self.collection.insert_many(docs, ordered=True)
                    self.written = due
                next_tick += LIVE_TICK_S
                time.sleep(max(0.0, next_tick - time.monotonic()))
            self.elapsed_s = time.monotonic() - began
        except Exception as exc:  # reported by the run through `.error`
            self.error = exc

    @property
    def achieved_rate(self) -> float:
        return self.written / self.elapsed_s if self.elapsed_s else 0.0
