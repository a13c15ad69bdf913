"""mongod's TTL monitor: a background pass every `ttlMonitorSleepSecs` (60 s by default) deletes the
documents a TTL index has expired, as ordinary deletes, so change streams see a `delete` event for each.

mongomock instead hides an expired document from every read the moment it expires, with no event, and
scans the whole collection on each access to do it; `storage.py` turns that off. On mongod an expired
document stays readable until the next pass, and only the primary runs the monitor (a secondary
replicates its deletes). A TTL index is a single-field index; mongod ignores `expireAfterSeconds` on a
compound one. A document expires when its field holds a date (an array: its earliest date) at least
`expireAfterSeconds` in the past; any other value never expires. A partial TTL index expires only the
documents its `partialFilterExpression` selects.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson.datetime_ms import DatetimeMS
from mongomock import filtering as mm_filtering

from .docstore import store_key

if TYPE_CHECKING:
    from .engine import Engine
    from .storage import Storage

log = logging.getLogger(__name__)

DEFAULT_SLEEP_S = 60.0

_EPOCH = datetime.datetime(1970, 1, 1)


@dataclass(slots=True)
class TtlStats:
    """serverStatus `metrics.ttl`: passes run and documents they deleted."""

    passes: int = 0
    deleted_documents: int = 0


def _millis(value: Any) -> int | None:
    """A BSON date as milliseconds since the epoch (stored dates are naive UTC); None for anything else."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return (value - _EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, DatetimeMS):
        return int(value)
    return None


def _expiry_millis(value: Any) -> int | None:
    if isinstance(value, list):
        dates = [ms for ms in map(_millis, value) if ms is not None]
        return min(dates) if dates else None
    return _millis(value)


def _ttl_indexes(info: dict[str, Any]) -> list[tuple[str, float, dict[str, Any] | None]]:
    out = []
    for spec in info.values():
        key = list(spec.get("key") or [])
        seconds = spec.get("expireAfterSeconds")
        if len(key) == 1 and isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            out.append((key[0][0], float(seconds), spec.get("partialFilterExpression")))
    return out


def _field(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def expire_once(storage: Storage, now: datetime.datetime) -> int:
    """One monitor pass at `now` (naive UTC): delete what every TTL index has expired; the count."""
    now_ms = _millis(now)
    assert now_ms is not None
    deleted = 0
    for db, collections in list(storage.meta.items()):
        for coll, meta in list(collections.items()):
            if meta.is_view:
                continue
            col = storage.collection(db, coll)
            for path, seconds, partial in _ttl_indexes(col.index_information()):
                cutoff = now_ms - seconds * 1000
                expired = []
                for doc in col._store.documents:
                    at = _expiry_millis(_field(doc, path))
                    selected = partial is None or mm_filtering.filter_applies(partial, doc)
                    if at is not None and at <= cutoff and selected:
                        expired.append(doc["_id"])
                for _id in expired:
                    if store_key(_id) in col._store:  # another index of this pass may have taken it
                        deleted += len(storage.delete(db, coll, {"_id": _id}, 1))
    return deleted


async def run_ttl_monitor(engine: Engine, sleep_s: float) -> None:
    """Until cancelled: a pass every `sleep_s` seconds while primary."""
    while True:
        await asyncio.sleep(sleep_s)
        if engine.topology.stepped_down:
            continue
        try:
            now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            engine.ttl_stats.deleted_documents += expire_once(engine.shared_storage, now)
            engine.ttl_stats.passes += 1
        except Exception:  # a pass that fails is retried at the next one, as mongod's monitor does
            log.exception("TTL monitor pass failed")
