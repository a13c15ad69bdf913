"""Direct access to mongomock 4.3.0's document store, and mapping its errors to server errors.

mongomock's public insert/replace/find re-validate, re-encode and scan every document; the emulator has
already decoded and validated what it stores, so exact-`_id` work goes straight to the per-collection
store (an ordered dict keyed by `_id`). mongomock is pinned, so these private names are stable.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from bson import Binary, Code, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from mongomock import filtering as mm_filtering
from mongomock import helpers as mm_helpers
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteError

from .bsonvalues import (
    MAX_STORAGE_DEPTH,
    MAX_WIRE_DEPTH,
    RawRegex,
    Undefined,
    encode,
    too_deep,
    too_deep_error,
    validate_column,
)
from .errors import CommandError

__all__ = [
    "NO_KEY",
    "duplicate_key",
    "exact_id",
    "insert_into_store",
    "mongomock_error",
    "replace_in_store",
    "storable",
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
    if isinstance(value, dict | list | bool | re.Pattern | Regex | RawRegex | Decimal128) or value is None:
        return NO_KEY
    return value


class _DecimalKey(tuple[str, bytes]):
    """Decimal128 is unhashable; the store keys such `_id`s by their 16 bytes."""


class _CodeKey(tuple[str, str, bytes | None]):
    """Code is unhashable; the store keys such `_id`s by their code and scope."""


_NAN_KEY = ("nan",)  # every NaN is one `_id` value (mongod's NaN equals NaN; Python's does not)


def store_key(_id: Any) -> Any:
    """The key mongomock's store files a document under (hashdict for documents, as mongomock does)."""
    kind = type(_id)
    if kind is int or kind is str or kind is ObjectId:
        return _id
    if kind is float and _id != _id:
        return _NAN_KEY
    if isinstance(_id, Code):
        return _CodeKey(("code", str(_id), None if _id.scope is None else encode(_id.scope)))
    if isinstance(_id, dict):
        return mm_helpers.hashdict(_id)
    if isinstance(_id, Decimal128):
        return _DecimalKey(("decimal128", _id.bid))
    if isinstance(_id, list | re.Pattern | Regex):
        raise CommandError(2, f"can't use a {type(_id).__name__} for _id")
    return _id


# Values stored as they are (immutable, no containers inside).
_LEAVES = frozenset(
    {str, int, float, bool, type(None), bytes, Int64, ObjectId, Decimal128, Timestamp, DatetimeMS}
)
_UTC = datetime.UTC


class _TooDeep(Exception):
    pass


def _copy(value: Any, level: int) -> Any:
    """A private copy of a value for the store (containers copied, dates naive UTC as mongomock keeps
    them); raises _TooDeep for a non-empty document or array at nesting level MAX_STORAGE_DEPTH."""
    kind = type(value)
    if kind is dict or isinstance(value, dict):
        if value and level >= MAX_STORAGE_DEPTH:
            raise _TooDeep
        return {k: v if type(v) in _LEAVES else _copy(v, level + 1) for k, v in value.items()}
    if kind is list or kind is tuple:
        if value and level >= MAX_STORAGE_DEPTH:
            raise _TooDeep
        return [v if type(v) in _LEAVES else _copy(v, level + 1) for v in value]
    if kind is datetime.datetime:
        if value.tzinfo is not None:
            value = value.astimezone(_UTC).replace(tzinfo=None)
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if kind is Binary and value.subtype == 7:
        validate_column(bytes(value))  # mongod checks it on the wire: WireError, the command fails
    return value  # Code (its scope is never changed), the bsonvalues wrappers, UUID, MinKey, ...


def naive_dates(value: Any) -> Any:
    """`value` with every timezone-aware date as the naive UTC date the store holds (the same object
    when it has none): a query's dates arrive aware from the wire, and Python never orders or equates
    an aware date with a naive one (mongod compares the instants)."""
    kind = type(value)
    if kind is datetime.datetime:
        return value.astimezone(_UTC).replace(tzinfo=None) if value.tzinfo is not None else value
    if kind is dict:
        out: dict[str, Any] | None = None
        for key, item in value.items():
            fixed = naive_dates(item)
            if fixed is not item:
                if out is None:
                    out = dict(value)
                out[key] = fixed
        return value if out is None else out
    if kind is list:
        items = [naive_dates(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def storable(
    doc: dict[str, Any], *, insert: bool, tick: Callable[[], Timestamp] | None = None
) -> dict[str, Any]:
    """The stored form of a document: a copy (see ``_copy``), with mongod's storage checks: at most 180
    levels of nesting (Overflow 45: fixDocumentForInsert's message for inserts, storage_validation's for
    updates; empty documents and arrays do not count) and a valid `_id` (not a regex, array or undefined:
    InvalidIdField 53; no `$`-prefixed field in an `_id` document: 52).

    With ``tick`` (inserts, replacements), a top-level Timestamp(0, 0) other than a leading `_id` becomes a
    new cluster time, in ``doc`` too (fixDocumentForInsert; nested ones are kept, SERVER-43014)."""
    out: dict[str, Any] = {}
    try:
        for k, v in doc.items():
            kind = type(v)
            if kind not in _LEAVES:
                v = _copy(v, 1)
            elif kind is Timestamp and tick is not None and not v.time and not v.inc and k != "_id":
                v = doc[k] = tick()
            out[k] = v
    except _TooDeep:
        if insert and too_deep(doc, MAX_WIRE_DEPTH):
            raise too_deep_error() from None  # refused with the message, before any insert
        if insert:
            raise CommandError(
                45, f"cannot insert document because it exceeds {MAX_STORAGE_DEPTH} levels of nesting"
            ) from None
        raise CommandError(45, f"Document exceeds maximum nesting depth of {MAX_STORAGE_DEPTH}") from None
    if "_id" in out and type(out["_id"]) not in _LEAVES:
        _check_id(out["_id"])
    return out


def _check_id(value: Any) -> None:
    """storage_validation::storageValidIdField."""
    if isinstance(value, re.Pattern | Regex | RawRegex | list | Undefined):
        kind = "regex"
        if isinstance(value, list | Undefined):
            kind = "array" if isinstance(value, list) else "undefined"
        raise CommandError(53, f"The '_id' value cannot be of type {kind}")
    if isinstance(value, dict):
        _check_id_fields(value)


def _check_id_fields(value: Any) -> None:
    """BSONObj::storageValidEmbedded: `$`-prefixed names only as a DBRef ($ref, $id, $db in that order)."""
    if isinstance(value, dict):
        names = list(value)
        for index, name in enumerate(names):
            if name.startswith("$") and not _dbref_field(names, index):
                raise CommandError(
                    52, f"_id fields may not contain '$'-prefixed fields: {name} is not valid for storage."
                )
            _check_id_fields(value[name])
    elif isinstance(value, list):
        for item in value:
            _check_id_fields(item)


def _dbref_field(names: list[str], index: int) -> bool:
    name = names[index]
    if name == "$ref":
        return index + 1 < len(names) and names[index + 1] == "$id"
    if name == "$id":
        return index > 0 and names[index - 1] == "$ref"
    if name == "$db":
        return index > 1 and names[index - 1] == "$id" and names[index - 2] == "$ref"
    return False


def insert_into_store(col: Any, doc: dict[str, Any], *, stored: dict[str, Any] | None = None) -> None:
    """Insert straight into mongomock's store: its insert_one re-validates and re-encodes every document
    (the client already did), which tripled the cost of an insert. ``stored``: the document's stored
    form when the caller already made it (``storable``)."""
    key = store_key(doc["_id"])
    store = col._store
    if key in store:
        raise DuplicateKeyError("E11000 Duplicate Key Error", 11000)
    store[key] = stored if stored is not None else storable(doc, insert=True)
    if any(index.get("unique") for index in store.indexes.values()):
        try:
            col._ensure_uniques(store[key])
        except DuplicateKeyError:
            del store[key]
            raise


def replace_in_store(
    col: Any, _id: Any, doc: dict[str, Any], *, stored: dict[str, Any] | None = None
) -> None:
    """Replace by `_id` in mongomock's store directly (its replace_one scans every document)."""
    _id = store_key(_id)
    store = col._store
    old = store[_id]
    store[_id] = stored if stored is not None else storable(doc, insert=False)
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


def check_unique_partial(col: Any, fields: list[str], partial: dict[str, Any]) -> None:
    """A unique partial index's build: the documents its filter selects must not share a key."""
    seen: list[dict[str, Any]] = []
    for doc in col._store.documents:
        if mm_filtering.filter_applies(partial, doc):
            value = _key_value(doc, fields)
            if value in seen:
                raise DuplicateKeyError(f"E11000 Duplicate Key Error: {value}", 11000)
            seen.append(value)


def duplicate_key(col: Any, ns: str, doc: dict[str, Any], own_id: Any) -> CommandError:
    """E11000 naming the unique index that conflicts, with keyPattern/keyValue like the server."""
    doc = naive_dates(doc)  # compared with stored documents
    for name, spec in col.index_information().items():
        if name != "_id_" and not spec.get("unique"):
            continue
        fields = [path for path, _ in spec["key"]]
        value = _key_value(doc, fields)
        partial = spec.get("partialFilterExpression")
        if name == "_id_":
            # A lookup, as mongod's index does: a find would scan the collection once per duplicate.
            clash = store_key(value["_id"]) in col._store and value["_id"] != own_id
        elif partial is not None:
            clash = mm_filtering.filter_applies(partial, doc) and any(
                other["_id"] != own_id for other in col.find({"$and": [partial, value]}, {"_id": 1})
            )
        else:
            clash = any(other["_id"] != own_id for other in col.find(value, {"_id": 1}))
        if clash:
            shown = ", ".join(f"{k}: {v!r}" for k, v in value.items())
            return CommandError(
                11000,
                f"E11000 duplicate key error collection: {ns} index: {name} dup key: {{ {shown} }}",
                extra={"keyPattern": dict(spec["key"]), "keyValue": value},
            )
    return CommandError(11000, f"E11000 duplicate key error collection: {ns}")
