"""A paced writer of numbered events over N channels, and the delivery audit the fault tests share."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from pymongo.errors import AutoReconnect, BulkWriteError, NotPrimaryError

WRITE_RETRY_S = 30.0


class Writer(threading.Thread):
    """Inserts `total` documents `{_id: i, seq: i, ch: "ch<i % channels>"}` at about `rate` per second."""

    def __init__(self, collection: Any, total: int, channels: int, rate: float, batch: int = 100) -> None:
        super().__init__(daemon=True)
        self.collection = collection
        self.total = total
        self.channels = channels
        self.rate = rate
        self.batch = batch
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            for start in range(0, self.total, self.batch):
                docs = [
                    {"_id": i, "seq": i, "ch": f"ch{i % self.channels}"}
                    for i in range(start, min(start + self.batch, self.total))
                ]
                self._insert(docs)
                self.written += len(docs)
                ahead = self.written / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # surfaced by the test through `.error`
            self.error = exc

    def _insert(self, docs: list[dict[str, Any]]) -> None:
        """Insert like an application would: retry while the primary is away (step-down, dropped sockets)."""
        deadline = time.monotonic() + WRITE_RETRY_S
        while True:
            try:
                self.collection.insert_many(docs, ordered=True)
                return
            except BulkWriteError as exc:
                # A retried batch whose first attempt was applied in part: keep what is not there yet.
                if any(err.get("code") != 11000 for err in exc.details.get("writeErrors", [])):
                    raise
                done = {err["op"]["_id"] for err in exc.details["writeErrors"]}
                docs = [d for d in docs[exc.details.get("nInserted", 0) :] if d["_id"] not in done]
                if not docs:
                    return
            except (AutoReconnect, NotPrimaryError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@dataclass
class Audit:
    delivered: int
    distinct: int
    duplicate_ids: int
    missing: list[int]
    out_of_order_channels: list[str]
    received_at_ms: list[float] = field(default_factory=list)

    def assert_perfect(self, total: int) -> None:
        assert self.missing == [], f"{len(self.missing)} events lost, first {self.missing[:10]}"
        assert self.duplicate_ids == 0, f"{self.duplicate_ids} duplicate messages delivered"
        assert self.distinct == total
        assert self.out_of_order_channels == [], f"order broken on {self.out_of_order_channels[:5]}"


def audit(messages: list[dict[str, Any]], total: int) -> Audit:
    """What subscribers saw: loss, duplicates, and per-channel order against stream order."""
    ids = [m["id"] for m in messages]
    per_channel: dict[str, list[tuple[str, int]]] = defaultdict(list)
    seen: set[int] = set()
    duplicates_by_content = 0
    for msg in messages:
        seq = orjson.loads(msg["data"])["fullDocument"]["seq"]
        if seq in seen:
            duplicates_by_content += 1
        seen.add(seq)
        per_channel[msg["channel"]].append((msg["id"], seq))
    broken = [
        ch
        for ch, items in per_channel.items()
        if [s for _, s in items] != sorted(s for _, s in items)
        or [i for i, _ in items] != sorted(i for i, _ in items)
    ]
    return Audit(
        delivered=len(messages),
        distinct=len(seen),
        duplicate_ids=(len(ids) - len(set(ids))) + duplicates_by_content,
        missing=sorted(set(range(total)) - seen),
        out_of_order_channels=sorted(broken),
        received_at_ms=[float(m.get("received_at", 0)) for m in messages],
    )
