"""Changing an index's options as mongod does: `collMod` with `index`, and `createIndexes`' conflicts.

mongod never changes an index's options through `createIndexes`: the same name with the same key and other
options fails with 85 IndexOptionsConflict (and the same name with another key with 86
IndexKeySpecsConflict, which `storage.create_indexes` checks). A TTL's expiry is changed in place with

    {collMod: <coll>, index: {name: <name> | keyPattern: <key>, expireAfterSeconds: <n>}}

which replies `{expireAfterSeconds_old: <old>, expireAfterSeconds_new: <n>, ok: 1}` (only `_new` when a
plain single-field index becomes a TTL index, as mongod ≥ 5.1 allows), and records a `modify` event with
the index's new options and `stateBeforeChange.indexOptions`. Errors as mongod 7.0 gives them: no such
collection 26 NamespaceNotFound, no such index 27 IndexNotFound, both or neither of name and keyPattern,
an unknown field, a compound or `_id` index: 72 InvalidOptions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bson import SON, Binary, Regex

from .errors import CommandError

if TYPE_CHECKING:
    from .storage import Storage

OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")

# What mongod 7.0 accepts in a partialFilterExpression (docs: core/index-partial; geo is not emulated).
_PARTIAL_FIELD_OPERATORS = frozenset({"$eq", "$exists", "$gt", "$gte", "$lt", "$lte", "$type", "$in"})
MODIFIABLE = frozenset({"name", "keyPattern", "expireAfterSeconds", "hidden"})


def check_same_name(name: str, existing: dict[str, Any], key: dict[str, Any], spec: dict[str, Any]) -> bool:
    """True when `spec` asks for the index `existing` already is (createIndexes then does nothing);
    raises mongod's conflict errors otherwise."""
    if list(existing["key"]) != list(key.items()):
        raise CommandError(86, f"An existing index has the same name as the requested index: {name}")
    wanted = {k: spec[k] for k in OPTIONS if k in spec}
    have = {k: existing[k] for k in OPTIONS if k in existing}
    if wanted != have:
        raise CommandError(
            85,
            "An equivalent index already exists with the same name but different options. "
            f"Requested index: {_describe(name, key, wanted)}, existing index: {_describe(name, key, have)}",
        )
    return True


def check_partial_filter(name: str, key: dict[str, Any], spec: dict[str, Any]) -> None:
    """mongod's checks of `partialFilterExpression` when an index is created: a document, not with
    `sparse`, not on `_id`, and built only of the expressions a partial index supports."""
    if "partialFilterExpression" not in spec:
        return
    expr = spec["partialFilterExpression"]
    if not isinstance(expr, dict):
        raise CommandError(
            14, f"The field 'partialFilterExpression' must be an object, but got {type(expr).__name__}"
        )
    if name == "_id_" or dict(key) == {"_id": 1}:
        raise CommandError(
            197, "The field 'partialFilterExpression' is not valid for an _id index specification"
        )
    if spec.get("sparse"):
        raise CommandError(67, 'cannot mix "partialFilterExpression" and "sparse" options')
    _check_partial_document(expr)


def _unsupported(expr: Any) -> CommandError:
    return CommandError(67, f"Expression not supported in partial index: {expr}")


def _check_partial_document(expr: dict[str, Any]) -> None:
    for field, cond in expr.items():
        if field in ("$and", "$or"):
            if not isinstance(cond, list) or not cond or not all(isinstance(part, dict) for part in cond):
                raise CommandError(2, f"{field} argument must be a non-empty array of objects")
            for part in cond:
                _check_partial_document(part)
        elif field.startswith("$"):
            raise _unsupported({field: cond})
        elif isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
            for op, arg in cond.items():
                if op not in _PARTIAL_FIELD_OPERATORS or (op == "$exists" and not arg):
                    raise _unsupported({field: {op: arg}})
        elif isinstance(cond, re.Pattern | Regex):
            raise _unsupported({field: cond})


def modify_index(storage: Storage, db: str, coll: str, spec: Any) -> dict[str, Any]:
    """`collMod`'s `index` option: the reply fields (without `ok`)."""
    meta = storage.get_meta(db, coll)
    if meta is None:
        raise CommandError(26, f"ns does not exist: {db}.{coll}")
    if not isinstance(spec, dict):
        raise CommandError(14, "BSON field 'collMod.index' is the wrong type, expected type 'object'")
    unknown = sorted(set(spec) - MODIFIABLE)
    if unknown:
        raise CommandError(40415, f"BSON field 'collMod.index.{unknown[0]}' is an unknown field.")
    if ("name" in spec) == ("keyPattern" in spec):
        raise CommandError(72, "Must specify either index name or key pattern.")
    col = storage.collection(db, coll)
    info = col.index_information()
    if "name" in spec:
        name = spec["name"]
        if name not in info:
            raise CommandError(27, f"cannot find index {name} for ns {db}.{coll}")
    else:
        pattern = list(dict(spec["keyPattern"]).items())
        names = [n for n, s in info.items() if list(s["key"]) == pattern]
        if not names:
            raise CommandError(27, f"cannot find index {dict(pattern)} for ns {db}.{coll}")
        name = names[0]
    reply: dict[str, Any] = {}
    if "expireAfterSeconds" not in spec:
        return reply  # `hidden` alone: the emulator has no planner to hide an index from
    seconds = spec["expireAfterSeconds"]
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise CommandError(72, "TTL index 'expireAfterSeconds' option must be numeric and non-negative")
    index = dict(info[name])
    if name == "_id_" or len(index["key"]) != 1:
        raise CommandError(72, f"no expireAfterSeconds field to update: index {name} is not a TTL index")
    old = index.get("expireAfterSeconds")
    if old is not None:
        reply["expireAfterSeconds_old"] = old
    reply["expireAfterSeconds_new"] = seconds
    if old != seconds:
        stored = {k: v for k, v in index.items() if k != "v"}
        stored["expireAfterSeconds"] = int(seconds)
        col._store.create_index(name, stored)  # mongomock: the index document and its TTL registry
        storage.record(
            "modify",
            db,
            coll,
            collection_uuid=meta.uuid,
            extra={
                "operationDescription": {"index": {"name": name, "expireAfterSeconds": seconds}},
                "stateBeforeChange": {
                    "collectionOptions": {"uuid": Binary.from_uuid(meta.uuid)},
                    "indexOptions": {} if old is None else {"expireAfterSeconds": old},
                },
            },
            expanded=True,
        )
    return reply


def _describe(name: str, key: dict[str, Any], options: dict[str, Any]) -> str:
    return str({"v": 2, "key": SON(key.items()), "name": name, **options})
