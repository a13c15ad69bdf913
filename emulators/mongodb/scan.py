"""Collection scans that stay linear and keep the event loop answering other clients.

mongomock 4.3.0's cursor re-slices its whole result list on every ``next()`` (``_compute_results``), so
iterating a result of n documents costs O(n²): a count of 100k documents stalled the emulator for over a
minute and every change stream on it timed out. Here a scan takes a snapshot of the store's references
(stored documents are never mutated in place: writes replace them), filters it with mongomock's own
matcher, and yields to the event loop whenever it has run for ``SLICE_S``: a reply on another connection
takes several loop iterations (wake, read, compute, write), and each of them waits for one slice, so the
slice is short. Sorting stays mongomock's (one ``sorted`` per key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mongomock import filtering as mm_filtering
from mongomock import helpers as mm_helpers
from sentinels import NOTHING  # type: ignore[import-untyped]  # mongomock's missing-path marker

from .bsonvalues import encode

__all__ = [
    "SCAN_SLICE",
    "Pacer",
    "copies",
    "count_shape",
    "distinct_values",
    "matching",
    "matching_now",
    "project",
    "sort_documents",
]

# Documents handled between two looks at the clock (about 0.1-1 ms of matching).
SCAN_SLICE = 256
# Longest run of a scan without yielding to the event loop. Measured at 100k documents (2 cores, shared):
# slices of 2000 documents let a concurrent idle getMore take ~100 ms, time slices of 1 ms ~15 ms.
SLICE_S = 0.001


class Pacer:
    """Yields to the event loop when the work since the last yield has taken ``SLICE_S``."""

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def pause(self) -> None:
        if time.perf_counter() - self._since >= SLICE_S:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


def _snapshot(col: Any) -> list[dict[str, Any]]:
    """References to the stored documents, in natural order (mongomock applies TTL expiry here)."""
    store = col._store
    if store.is_empty:
        return []
    return list(store.documents)


def matching_now(col: Any, query: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored documents matching ``query`` (references, natural order), in one synchronous pass:
    for writes, which must not interleave with other commands."""
    docs = _snapshot(col)
    if not docs:
        mm_filtering.filter_applies(query, {})  # an invalid query fails even on an empty collection
    if not query:
        return docs
    applies = mm_filtering.filter_applies
    return [doc for doc in docs if applies(query, doc)]


async def matching(col: Any, query: dict[str, Any]) -> list[dict[str, Any]]:
    """Like ``matching_now``, yielding to the event loop between slices of the scan."""
    docs = _snapshot(col)
    if not docs:
        mm_filtering.filter_applies(query, {})
        return []
    if not query:
        return docs
    applies = mm_filtering.filter_applies
    out: list[dict[str, Any]] = []
    pacer = Pacer()
    for start in range(0, len(docs), SCAN_SLICE):
        out.extend(doc for doc in docs[start : start + SCAN_SLICE] if applies(query, doc))
        await pacer.pause()
    return out


async def _map_sliced(docs: list[dict[str, Any]], fn: Callable[[dict[str, Any]], Any]) -> list[Any]:
    out: list[Any] = []
    pacer = Pacer()
    for start in range(0, len(docs), SCAN_SLICE):
        out.extend(fn(doc) for doc in docs[start : start + SCAN_SLICE])
        await pacer.pause()
    return out


async def copies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Private copies (with tz-aware dates, as mongomock's find returns them) for pipelines to work on."""
    return await _map_sliced(docs, mm_helpers.make_datetime_timezone_aware_in_document)


async def project(col: Any, docs: list[dict[str, Any]], projection: dict[str, Any]) -> list[dict[str, Any]]:
    """A find projection (mongomock's, incl. ``$slice``/``$elemMatch``), as copies."""

    def one(doc: dict[str, Any]) -> dict[str, Any]:
        projected = col._copy_only_fields(doc, projection, dict)
        return mm_helpers.make_datetime_timezone_aware_in_document(projected)

    return await _map_sliced(docs, one)


def sort_documents(docs: list[dict[str, Any]], sort: dict[str, Any]) -> list[dict[str, Any]]:
    """mongomock's find sort: one stable sort per key, last key first. Raises NotImplementedError for
    keys it cannot order (the caller falls back to the aggregation $sort)."""
    out = docs
    for key, direction in reversed(list(sort.items())):
        if key == "$natural":
            if direction < 0:
                out = list(reversed(out))
            continue
        if key.startswith("$"):
            raise NotImplementedError(f"sorting by {key}")
        out = sorted(out, key=lambda doc: mm_filtering.resolve_sort_key(key, doc), reverse=direction < 0)
    return out


def count_shape(stages: list[Any]) -> Callable[[int], list[dict[str, Any]]] | None:
    """If ``stages`` only count their input (PyMongo's count_documents: ``$skip``/``$limit`` then
    ``{$group: {_id: <constant>, n: {$sum: 1}}}``, or ``$count``), a function from the input size to the
    result; else None. Counting needs no copy of the documents."""
    skip, limit = 0, None
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or len(stage) != 1:
            return None
        name, spec = next(iter(stage.items()))
        if name == "$skip" and _is_count(spec):
            skip += int(spec)
        elif name == "$limit" and _is_count(spec) and spec > 0:
            limit = int(spec) if limit is None else min(limit, int(spec))
        elif index == len(stages) - 1:
            final = _final_count(name, spec)
            if final is None:
                return None
            return lambda n: final(_window(n, skip, limit))
        else:
            return None
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _window(n: int, skip: int, limit: int | None) -> int:
    n = max(0, n - skip)
    return n if limit is None else min(n, limit)


def _final_count(name: str, spec: Any) -> Callable[[int], list[dict[str, Any]]] | None:
    if name == "$count" and isinstance(spec, str) and spec and not spec.startswith("$") and "." not in spec:
        return lambda n: [{spec: n}] if n else []
    if name != "$group" or not isinstance(spec, dict) or "_id" not in spec:
        return None
    group_id = spec["_id"]
    if isinstance(group_id, dict | list) or (isinstance(group_id, str) and group_id.startswith("$")):
        return None
    sums: dict[str, int] = {}
    for field, accumulator in spec.items():
        if field == "_id":
            continue
        if not isinstance(accumulator, dict) or list(accumulator) != ["$sum"]:
            return None
        addend = accumulator["$sum"]
        if not isinstance(addend, int) or isinstance(addend, bool):
            return None
        sums[field] = addend
    return lambda n: [{"_id": group_id, **{f: a * n for f, a in sums.items()}}] if n else []


def distinct_values(docs: list[dict[str, Any]], key: str) -> list[Any]:
    """The distinct values at ``key`` (array elements counted one by one), as mongomock's distinct."""
    seen: dict[Any, Any] = {}
    for doc in docs:
        for values in mm_filtering.iter_key_candidates(key, doc):
            if values is NOTHING:
                continue
            for value in values if isinstance(values, list | tuple) else [values]:
                seen.setdefault(_distinct_key(value), value)
    return list(seen.values())


def _distinct_key(value: Any) -> Any:
    if isinstance(value, dict):
        return mm_helpers.hashdict(value)
    try:
        hash(value)
    except TypeError:  # Decimal128, Code, lists: one entry per encoded value
        return ("bson", encode({"": value}))
    return value
