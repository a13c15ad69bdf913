"""Direct access to mongomock 4.3.0's document store, and mapping its errors to server errors.

mongomock's public insert/replace/find re-validate, re-encode and scan every document; the emulator has
already decoded and validated what it stores, so exact-`_id` work goes straight to the per-collection
store (an ordered dict keyed by `_id`). mongomock is pinned, so these private names are stable.
"""

from __future__ import annotations

import re
from typing import Any

from bson import Decimal128, Regex
from mongomock import helpers as mm_helpers
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteError

from .errors import CommandError

__all__ = [
    "NO_KEY",
    "duplicate_key",
    "exact_id",
    "insert_into_store",
    "mongomock_error",
    "replace_in_store",
    "store_key",
]


def mongomock_error(exc: Exception) -> CommandError:
    if isinstance(exc, DuplicateKeyError):
        return CommandError(11000, f"E11000 duplicate key error: {exc}")
    if isinstance(exc, OperationFailure | WriteError):
        return CommandError(exc.code or 2, str(exc))
    if isinstance(exc, NotImplementedError):
        return CommandError(2, f"not supported by the emulator: {exc}")
    return CommandError(2, str(exc))


NO_KEY = object()


def exact_id(query: dict[str, Any]) -> Any:
    """The `_id` value when ``query`` is exactly `{_id: <scalar>}` (or `$eq`), else NO_KEY."""
    if len(query) != 1 or "_id" not in query:
        return NO_KEY
    value = query["_id"]
    if isinstance(value, dict) and len(value) == 1 and "$eq" in value:
        value = value["$eq"]
    if isinstance(value, dict | list | bool | re.Pattern | Regex | Decimal128) or value is None:
        return NO_KEY
    return value


class _DecimalKey(tuple[str, bytes]):
    """Decimal128 is unhashable; the store keys such `_id`s by their 16 bytes."""


def store_key(_id: Any) -> Any:
    """The key mongomock's store files a document under (hashdict for documents, as mongomock does)."""
    if isinstance(_id, dict):
        return mm_helpers.hashdict(_id)
    if isinstance(_id, Decimal128):
        return _DecimalKey(("decimal128", _id.bid))
    if isinstance(_id, list | re.Pattern | Regex):
        raise CommandError(2, f"can't use a {type(_id).__name__} for _id")
    return _id


def insert_into_store(col: Any, doc: dict[str, Any]) -> None:
    """Insert straight into mongomock's store: its insert_one re-validates and re-encodes every document
    (the client already did), which tripled the cost of an insert."""
    key = store_key(doc["_id"])
    store = col._store
    if key in store:
        raise DuplicateKeyError("E11000 Duplicate Key Error", 11000)
    # patch_datetime_awareness rebuilds every container, so the store gets its own copy.
    store[key] = mm_helpers.patch_datetime_awareness_in_document(doc)
    if any(index.get("unique") for index in store.indexes.values()):
        try:
            col._ensure_uniques(store[key])
        except DuplicateKeyError:
            del store[key]
            raise


def replace_in_store(col: Any, _id: Any, doc: dict[str, Any]) -> None:
    """Replace by `_id` in mongomock's store directly (its replace_one scans every document)."""
    _id = store_key(_id)
    store = col._store
    old = store[_id]
    store[_id] = mm_helpers.patch_datetime_awareness_in_document(doc)
    try:
        col._ensure_uniques(store[_id])
    except DuplicateKeyError:
        store[_id] = old
        raise


def _key_value(doc: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in fields:
        cur: Any = doc
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        out[path] = cur
    return out


def duplicate_key(col: Any, ns: str, doc: dict[str, Any], own_id: Any) -> CommandError:
    """E11000 naming the unique index that conflicts, with keyPattern/keyValue like the server."""
    for name, spec in col.index_information().items():
        if name != "_id_" and not spec.get("unique"):
            continue
        fields = [path for path, _ in spec["key"]]
        value = _key_value(doc, fields)
        for other in col.find(value, {"_id": 1}):
            if other["_id"] != own_id:
                shown = ", ".join(f"{k}: {v!r}" for k, v in value.items())
                return CommandError(
                    11000,
                    f"E11000 duplicate key error collection: {ns} index: {name} dup key: {{ {shown} }}",
                    extra={"keyPattern": dict(spec["key"]), "keyValue": value},
                )
    return CommandError(11000, f"E11000 duplicate key error collection: {ns}")
