"""The user's change-stream pipeline: parsing, validation, routing check, hash, own-collection exclusion.

The pipeline runs server-side inside the change stream, so a mistake surfaces only when the stream opens
(or, worse, as every event being unpublishable). We therefore validate what we can before connecting:
the shape (an array of one-key stage documents), the stages a change stream accepts, and that no stage
touches `_id` (the resume token; the server refuses to resume a stream whose `_id` was modified).
Each problem is one line naming the variable, the stage index and what is wrong.

Public API:
    parse_pipeline(text, *, source="PIPELINE") -> list[dict]     raises PipelineError
    validate_stages(stages, *, source="PIPELINE") -> list[dict]  raises PipelineError
    sets_channel(stages) -> bool
    pipeline_hash(stages) -> str
    exclusion_stage(coll_names) -> dict
    large_event_stages(pipeline, *, split_supported) -> list[dict]
"""

from __future__ import annotations

import hashlib
from typing import Any

from bson import json_util
from bson.errors import BSONError
from bson.json_util import CANONICAL_JSON_OPTIONS

from connector.errors import PipelineError

__all__ = [
    "ALLOWED_STAGES",
    "CHANNEL_FIELD",
    "exclusion_stage",
    "large_event_stages",
    "parse_pipeline",
    "pipeline_hash",
    "sets_channel",
    "validate_stages",
]

Stage = dict[str, Any]

#: Stages MongoDB accepts in a change-stream pipeline (server docs, "Modify Change Stream Output").
ALLOWED_STAGES: tuple[str, ...] = (
    "$addFields",
    "$changeStreamSplitLargeEvent",
    "$match",
    "$project",
    "$redact",
    "$replaceRoot",
    "$replaceWith",
    "$set",
    "$unset",
)

#: The root field that names the Ably channel (message contract).
CHANNEL_FIELD = "_ablyChannel"

#: Stages whose argument is a document of field -> expression.
_FIELD_STAGES = frozenset({"$addFields", "$set", "$project"})


def parse_pipeline(text: str, *, source: str = "PIPELINE") -> list[Stage]:
    """Parse JSON / MongoDB Extended JSON text (`{"$date": ...}`, `{"$oid": ...}` ...) and validate it."""
    try:
        value = json_util.loads(text)
    except (ValueError, TypeError, KeyError, ArithmeticError, BSONError) as exc:
        # json.JSONDecodeError is a ValueError; bad Extended JSON wrappers raise the others
        # (InvalidId is a BSONError, a bad $numberDecimal a decimal.InvalidOperation).
        raise PipelineError([f"{source}: not valid JSON or Extended JSON: {exc}"]) from None
    return validate_stages(value, source=source)


def validate_stages(value: Any, *, source: str = "PIPELINE") -> list[Stage]:
    """Check an already-decoded pipeline; return it as a list of stage dicts or raise PipelineError."""
    if not isinstance(value, list):
        raise PipelineError([f"{source}: must be a JSON array of stages (got {_kind(value)})"])
    problems: list[str] = []
    last = len(value) - 1
    for index, stage in enumerate(value):
        problem = _stage_problem(stage, is_last=index == last)
        if problem:
            problems.append(f"{source}: stage {index}: {problem}")
    if problems:
        raise PipelineError(problems)
    return value


def _stage_problem(stage: Any, *, is_last: bool) -> str | None:
    if not isinstance(stage, dict):
        return f'must be a document like {{"$match": {{...}}}} (got {_kind(stage)})'
    if len(stage) != 1:
        keys = ", ".join(stage) or "none"
        return f"must have exactly one key, the stage name (got {len(stage)}: {keys})"
    ((name, arg),) = stage.items()
    if name not in ALLOWED_STAGES:
        return f"{name} is not allowed in a change stream pipeline (allowed: {', '.join(ALLOWED_STAGES)})"
    return _argument_problem(name, arg, is_last=is_last)


def _argument_problem(name: str, arg: Any, *, is_last: bool) -> str | None:
    if name in _FIELD_STAGES or name == "$match":
        return _fields_problem(name, arg)
    if name == "$unset":
        fields = [arg] if isinstance(arg, str) else arg
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            return "$unset takes a field name or a non-empty array of field names"
        if any(_is_id_path(f) for f in fields):
            return "$unset must not remove _id (the resume token)"
        return None
    if name == "$replaceRoot":
        if not isinstance(arg, dict) or set(arg) != {"newRoot"}:
            return "$replaceRoot takes a document with exactly one key, newRoot"
        return _new_root_problem(name, arg["newRoot"])
    if name == "$replaceWith":
        return _new_root_problem(name, arg)
    if name == "$changeStreamSplitLargeEvent":
        if arg != {}:
            return "$changeStreamSplitLargeEvent takes an empty document {}"
        if not is_last:
            return "$changeStreamSplitLargeEvent must be the last stage"
    return None


def _is_id_path(path: str) -> bool:
    return path == "_id" or path.startswith("_id.")


def _fields_problem(name: str, arg: Any) -> str | None:
    if not isinstance(arg, dict):
        return f"{name} takes a document (got {_kind(arg)})"
    if name == "$match":
        return None
    for key, value in arg.items():
        if not _is_id_path(key):
            continue
        if name != "$project":
            return f"{name} must not modify _id (the resume token)"
        if value in (0, False):
            return "$project must not exclude _id (the resume token)"
        if value not in (1, True):
            return "$project must not modify _id (the resume token)"
    return None


#: Event fields that hold a document with its own `_id`; merged over the root, they replace the token.
_ID_CARRIERS = frozenset({"$fullDocument", "$fullDocumentBeforeChange", "$documentKey"})


def _new_root_problem(name: str, root: Any) -> str | None:
    """Catch the certain ways a new root loses the resume token (the stream fails on the first event).

    Only clear cases are errors: an expression other than `$$ROOT` as the whole root, a literal
    document without `_id`, or a `$mergeObjects` that has no `$$ROOT`/`_id` part or merges a
    document-bearing field (`$fullDocument` ...) after it. Anything subtler is left to the server.
    """
    keep = 'keep _id, e.g. {"$mergeObjects": ["$$ROOT", {...}]}'
    if isinstance(root, str):
        return None if root == "$$ROOT" else f"{name} with {root!r} drops _id (the resume token); {keep}"
    if not isinstance(root, dict):
        return f"{name} takes a document or an expression (got {_kind(root)})"
    parts = root.get("$mergeObjects")
    if parts is None:
        if "_id" in root or any(key.startswith("$") for key in root):
            return None
        return f"{name} document has no _id (the resume token); {keep}"
    if not isinstance(parts, list):
        return None
    keeps = [
        i for i, part in enumerate(parts) if part == "$$ROOT" or (isinstance(part, dict) and "_id" in part)
    ]
    if not keeps:
        return f"{name} $mergeObjects has no $$ROOT or _id part, so _id (the resume token) is lost; {keep}"
    later = [part for part in parts[keeps[-1] + 1 :] if isinstance(part, str) and part in _ID_CARRIERS]
    if later:
        return f"{name} merges {later[0]} after the root, replacing _id (the resume token); merge it first"
    return None


def _kind(value: Any) -> str:
    """Name a decoded JSON value's type the way a user wrote it."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for typ, label in kinds.items():
        if isinstance(value, typ):
            return label
    return "number" if isinstance(value, int | float) else type(value).__name__


def sets_channel(stages: list[Stage]) -> bool:
    """Does the pipeline (probably) leave `_ablyChannel` set on the event root?

    Follows the stages in order: `$addFields`/`$set`/`$project` with a computed `_ablyChannel`, or a
    `$replaceRoot`/`$replaceWith` whose new root (or one `$mergeObjects` part of it) sets it, turn it on;
    `$unset`, an exclusion `$project`, or a new root without it turn it off again. `$redact` and
    `$match` leave it as is. A False result means every event would be unpublishable; the caller warns.
    """
    present = False
    for stage in stages:
        ((name, arg),) = stage.items()
        if name in ("$addFields", "$set"):
            present = present or CHANNEL_FIELD in arg
        elif name == "$project":
            present = _project_keeps_channel(arg, present)
        elif name == "$unset":
            fields = [arg] if isinstance(arg, str) else arg
            present = present and CHANNEL_FIELD not in fields
        elif name in ("$replaceRoot", "$replaceWith"):
            root = arg["newRoot"] if name == "$replaceRoot" else arg
            present = _root_sets_channel(root)
    return present


def _project_keeps_channel(spec: dict[str, Any], present: bool) -> bool:
    value = spec.get(CHANNEL_FIELD)
    if value is None:
        # Inclusion projections drop unnamed fields; exclusion projections keep them.
        inclusion = any(v not in (0, False) for k, v in spec.items() if k != "_id")
        return present and not inclusion
    if isinstance(value, bool | int | float):
        return present and value not in (0, False)
    return True


def _root_sets_channel(root: Any) -> bool:
    if not isinstance(root, dict):
        return False
    if CHANNEL_FIELD in root:
        return True
    parts = root.get("$mergeObjects")
    return isinstance(parts, list) and any(_root_sets_channel(part) for part in parts)


def pipeline_hash(stages: list[Stage]) -> str:
    """A stable hex digest of the pipeline's canonical Extended JSON (key order kept: it matters to MongoDB).

    Stored with the checkpoint so that a restart under a changed pipeline is visible in the logs.
    """
    text = json_util.dumps(stages, json_options=CANONICAL_JSON_OPTIONS, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def exclusion_stage(coll_names: list[str]) -> Stage:
    """The leading `$match` of a database-wide watch that hides the connector's own collections.

    Without it the connector's checkpoint writes would stream back in (invariant 6). `$nin` also
    matches events that have no `ns.coll` at all (dropDatabase, invalidate), which must pass.
    """
    return {"$match": {"ns.coll": {"$nin": list(coll_names)}}}


SPLIT_STAGE: Stage = {"$changeStreamSplitLargeEvent": {}}
#: Above this, the stages appended on a server without the split stage drop an event's document bodies
#: (the change then arrives, and is published truncated). Under 16 MiB with room for the event's other
#: fields (token, namespace, documentKey, the pipeline's `_ably*` fields).
OVERSIZE_BODIES_BYTES = 15 * 1024 * 1024
#: Must match `messages.OVERSIZE_FIELD` (the router reads it; the pipeline must not import the router).
OVERSIZE_FIELD = "_livesyncOversize"
_BODIES = ("fullDocument", "fullDocumentBeforeChange", "updateDescription")


def split_supported(version: tuple[int, ...]) -> bool:
    """`$changeStreamSplitLargeEvent` exists from MongoDB 7.0, and in 6.0 from 6.0.9 (not 6.1-6.3)."""
    return version >= (7, 0) or (6, 0, 9) <= version < (6, 1)


def oversize_stages(limit: int = OVERSIZE_BODIES_BYTES) -> list[Stage]:
    """Stages that drop an event's document bodies server-side when together they exceed `limit` bytes,
    leaving their size in `_livesyncOversize`, so the event stays under 16 MiB and reaches the connector
    (which publishes it truncated) instead of failing the stream with BSONObjectTooLarge (10334)."""
    size = {"$add": [{"$bsonSize": {"$ifNull": [f"${field}", {}]}} for field in _BODIES]}
    over = {"$gt": [f"${OVERSIZE_FIELD}", limit]}
    drop: dict[str, Any] = {field: {"$cond": [over, "$$REMOVE", f"${field}"]} for field in _BODIES}
    drop[OVERSIZE_FIELD] = {"$cond": [over, f"${OVERSIZE_FIELD}", "$$REMOVE"]}
    return [{"$set": {OVERSIZE_FIELD: size}}, {"$set": drop}]


def large_event_stages(pipeline: list[Stage], *, split_supported: bool) -> list[Stage]:
    """What the connector appends so that an event over 16 MiB never halts the stream: the split stage
    where the server has it (unless the user's pipeline already ends with it), else `oversize_stages`.

    Not part of `pipeline_hash` (the user's pipeline): a token stored before these stages existed
    resumes under them, and they are the same on every open, as resuming from a fragment requires."""
    if pipeline and "$changeStreamSplitLargeEvent" in pipeline[-1]:
        return []
    return [dict(SPLIT_STAGE)] if split_supported else oversize_stages()
