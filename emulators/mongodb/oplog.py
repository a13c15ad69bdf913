"""The bounded oplog of change events and the resume tokens that point into it.

Every write outside a transaction appends one entry with a unique cluster time; the operations of a
committed transaction share the commit's cluster time and are told apart by their index in the
transaction (as the txnOpIndex in a real server's token). A position in the stream is a key
``(t, i, op, kind)``: ``kind`` 0 is the event (t, i, op), 1..0x7F its fragments when split, 0x80 the
invalidate that follows it, 0xFF (with op 0xFFFFFFFF) a high-water mark after everything up to (t, i).
Tokens are that key as fixed-width upper-case hex (the cluster time first, where the connector reads it),
so their ``_data`` strings sort in stream order and parse back to the key.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp
from bson.raw_bson import RawBSONDocument

from .errors import CommandError

KIND_EVENT = 0
# 1..0x7F: fragment n of an event split by $changeStreamSplitLargeEvent.
KIND_INVALIDATE = 0x80
KIND_HIGH_WATER = 0xFF

TOKEN_VERSION = "82"
TOKEN_LENGTH = 2 + 8 + 8 + 8 + 2
# The op index of a high-water mark: after every operation of a transaction committed at (t, i).
LAST_OP = 0xFFFFFFFF

# Compacting the entry list costs a memmove of the whole list; doing it only when this much slack has
# accumulated keeps appends amortised O(1) while the logical window stays exactly ``max_events``.
MIN_COMPACT_SLACK = 1024

Key = tuple[int, int, int, int]

HISTORY_LOST_MESSAGE = (
    "Resume of change stream was not possible, as the resume point may no longer be in the oplog."
)


def encode_token(key: Key) -> dict[str, str]:
    t, i, op, kind = key
    return {"_data": f"{TOKEN_VERSION}{t:08X}{i:08X}{op:08X}{kind:02X}"}


def decode_token(token: Any) -> Key:
    """Parse a resume token back to its key; 260 InvalidResumeToken when it is not one of ours."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or len(data) != TOKEN_LENGTH or not data.startswith(TOKEN_VERSION):
        raise CommandError(260, f"Invalid resume token: {token!r}")
    try:
        return int(data[2:10], 16), int(data[10:18], 16), int(data[18:26], 16), int(data[26:28], 16)
    except ValueError as exc:
        raise CommandError(260, f"Invalid resume token: {token!r}") from exc


def high_water_key(ts: Timestamp) -> Key:
    return (ts.time, ts.inc, LAST_OP, KIND_HIGH_WATER)


@dataclass(slots=True, eq=False)
class OplogEntry:
    """One change, with everything any stream shape may need to render it."""

    ts: Timestamp
    wall: datetime.datetime
    op: str
    db: str
    coll: str | None
    document_key: dict[str, Any] | None = None
    full_document: dict[str, Any] | None = None
    pre_image: dict[str, Any] | None = None
    post_image: dict[str, Any] | None = None
    update_description: dict[str, Any] | None = None
    collection_uuid: Any = None
    # DDL details: `to` for rename, operationDescription, nsType, ...
    extra: dict[str, Any] = field(default_factory=dict)
    # Shown only to streams opened with showExpandedEvents (create, createIndexes, modify, ...).
    expanded: bool = False
    # Pre-encoded default rendering (no pipeline, default options), built at most once.
    raw_default: RawBSONDocument | None = None
    # Operations of a committed transaction: their index in it, and the session that ran it.
    txn_index: int = 0
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None

    @property
    def key(self) -> Key:
        return (self.ts.time, self.ts.inc, self.txn_index, KIND_EVENT)

    def key_of(self, kind: int) -> Key:
        """The key of this entry's invalidate (KIND_INVALIDATE) or of its fragment ``kind``."""
        return (self.ts.time, self.ts.inc, self.txn_index, kind)


class Oplog:
    """Append-only, bounded to ``max_events`` entries; waiters wake on every append."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max(1, max_events)
        self._entries: list[OplogEntry] = []
        self._keys: list[Key] = []
        self._head = 0  # index of the oldest retained entry in _entries
        self._base_seq = 0  # sequence number of _entries[0]
        self._evicted_key: Key | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    # -- positions ------------------------------------------------------------------------------------
    @property
    def first_seq(self) -> int:
        return self._base_seq + self._head

    @property
    def end_seq(self) -> int:
        return self._base_seq + len(self._entries)

    def get(self, seq: int) -> OplogEntry:
        return self._entries[seq - self._base_seq]

    def seq_after(self, key: Key) -> int:
        """The sequence number of the first entry strictly after ``key``; 286 if history was lost."""
        if self._evicted_key is not None and key < self._evicted_key:
            raise CommandError(286, HISTORY_LOST_MESSAGE)
        return self._base_seq + bisect.bisect_right(self._keys, key, lo=self._head)

    def seq_at_or_after(self, ts: Timestamp) -> int:
        """First entry at or after operation time ``ts`` (startAtOperationTime); 286 if lost."""
        return self.seq_at_key((ts.time, ts.inc, 0, KIND_EVENT))

    def seq_at_key(self, key: Key) -> int:
        """First entry whose key is ``key`` or later; 286 if lost."""
        if self._evicted_key is not None and key <= self._evicted_key:
            raise CommandError(286, HISTORY_LOST_MESSAGE)
        return self._base_seq + bisect.bisect_left(self._keys, key, lo=self._head)

    # -- writing --------------------------------------------------------------------------------------
    def append(self, entry: OplogEntry) -> None:
        self._entries.append(entry)
        self._keys.append(entry.key)
        retained = len(self._entries) - self._head
        if retained > self.max_events:
            drop = retained - self.max_events
            self._evicted_key = self._keys[self._head + drop - 1]
            self._head += drop
            if self._head >= max(MIN_COMPACT_SLACK, self.max_events // 8):
                del self._entries[: self._head]
                del self._keys[: self._head]
                self._base_seq += self._head
                self._head = 0
        self._wake()

    def clear(self) -> None:
        """Forget everything (emulatorReset); positions keep increasing so old cursors stay sane."""
        self._base_seq = self.end_seq
        self._entries.clear()
        self._keys.clear()
        self._head = 0
        self._evicted_key = None
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_for_append(self, timeout: float) -> None:
        """Wait until something is appended or ``timeout`` seconds pass."""
        if timeout <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
