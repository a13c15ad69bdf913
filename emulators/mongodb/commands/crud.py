"""insert, update, delete, find, getMore, killCursors, findAndModify, count, distinct, aggregate."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mongomock
from bson import Int64
from bson.raw_bson import RawBSONDocument

from .. import scan
from ..aggregation import run_pipeline
from ..bsonvalues import WireError, encode
from ..changestream import (
    DEFAULT_AWAIT_S,
    DEFAULT_FIRST_BATCH,
    MAX_BATCH_BYTES,
    ChangeStreamCursor,
    check_read_concern,
    parse_options,
    position_cursor,
    validate_pipeline,
)
from ..engine import Connection, Engine, FindCursor, command
from ..errors import CommandError
from ..stream_namespaces import scope_for
from .admin import MAX_BSON_OBJECT_SIZE


def _coll_name(cmd: dict[str, Any]) -> str:
    name = next(iter(cmd.values()))
    if not isinstance(name, str) or not name:
        raise CommandError(73, f"Invalid namespace specified: {name!r}")
    return name


def _write_error(index: int, exc: CommandError) -> dict[str, Any]:
    return {"index": index, "code": exc.code, "codeName": exc.code_name, "errmsg": exc.message, **exc.extra}


def _check_insert_size(doc: Any) -> None:
    """mongod's fixDocumentForInsert: BadValue (2), not BSONObjectTooLarge, for an oversized insert."""
    size = len(encode(doc))
    if size > MAX_BSON_OBJECT_SIZE:
        raise CommandError(
            2, f"object to insert too large. size in bytes: {size}, max size: {MAX_BSON_OBJECT_SIZE}"
        )


def _each_statement(
    statements: list[Any], ordered: bool, apply: Callable[[int, Any], None]
) -> list[dict[str, Any]]:
    """Apply write statements in order, as mongod does: errors are collected per statement, and an
    ordered batch stops at the first one."""
    errors: list[dict[str, Any]] = []
    for index, stmt in enumerate(statements):
        try:
            apply(index, stmt)
        except WireError:
            raise  # BSON mongod refuses when it parses the message: the whole command fails
        except CommandError as exc:
            errors.append(_write_error(index, exc))
            if ordered:
                break
    return errors


def _write_reply(reply: dict[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    if errors:
        reply["writeErrors"] = errors
    return reply


@command("insert")
async def insert(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    # Only a message bigger than the document limit can hold a too-large document.
    check_size = conn.extra.get("last_request_size", 0) > MAX_BSON_OBJECT_SIZE
    n = 0
    documents = cmd.get("documents") or []
    # Every document is checked before any is inserted (mongod's checks of the message, then
    # fixDocumentForInsert for the batch): BSON refused on the wire (WireError) fails the whole command.
    prepared: list[Any] = []
    for doc in documents:
        try:
            if check_size:
                _check_insert_size(doc)
            prepared.append(engine.storage.prepare_insert(doc))
        except WireError:
            raise
        except CommandError as exc:
            prepared.append(exc)

    def apply(index: int, doc: Any) -> None:
        nonlocal n
        item = prepared[index]
        if isinstance(item, CommandError):
            raise item
        engine.storage.insert(db, coll, doc, item)
        n += 1

    errors = _each_statement(documents, cmd.get("ordered", True), apply)
    return _write_reply({"n": n, "ok": 1.0}, errors)


@command("update")
async def update(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    upserted: list[dict[str, Any]] = []
    n = modified = 0

    def apply(index: int, stmt: Any) -> None:
        nonlocal n, modified
        result = engine.storage.update(
            db,
            coll,
            stmt.get("q") or {},
            stmt.get("u"),
            multi=bool(stmt.get("multi")),
            upsert=bool(stmt.get("upsert")),
            array_filters=stmt.get("arrayFilters"),
        )
        if result.upserted:
            n += 1
            upserted.append({"index": index, "_id": result.upserted_id})
        else:
            n += result.matched
            modified += result.modified

    errors = _each_statement(cmd.get("updates") or [], cmd.get("ordered", True), apply)
    reply: dict[str, Any] = {"n": n, "nModified": modified, "ok": 1.0}
    if upserted:
        reply["upserted"] = upserted
    return _write_reply(reply, errors)


@command("delete")
async def delete(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    n = 0

    def apply(index: int, stmt: Any) -> None:
        nonlocal n
        n += len(engine.storage.delete(db, coll, stmt.get("q") or {}, int(stmt.get("limit", 0))))

    errors = _each_statement(cmd.get("deletes") or [], cmd.get("ordered", True), apply)
    return _write_reply({"n": n, "ok": 1.0}, errors)


@command("findAndModify", "findandmodify")
async def find_and_modify(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    query = cmd.get("query") or {}
    sort = cmd.get("sort")
    storage = engine.storage
    fields = cmd.get("fields")
    if cmd.get("remove"):
        removed = storage.delete(db, coll, query, 1, sort=sort)
        value = removed[0] if removed else None
        return {"lastErrorObject": {"n": len(removed)}, "value": _project_one(value, fields), "ok": 1.0}
    if "update" not in cmd:
        raise CommandError(9, "Either an update or remove=true must be specified")
    before = None
    if storage.get_meta(db, coll) is not None:
        ids = storage._matching_ids(db, coll, query, sort, 1)
        before = storage.find_one_by_id(db, coll, ids[0]) if ids else None
        if ids:
            query = {"_id": ids[0]}
    result = storage.update(
        db,
        coll,
        query,
        cmd["update"],
        upsert=bool(cmd.get("upsert")),
        sort=sort,
        array_filters=cmd.get("arrayFilters"),
    )
    last_error: dict[str, Any] = {
        "n": 1 if (result.matched or result.upserted) else 0,
        "updatedExisting": bool(result.matched),
    }
    if result.upserted:
        last_error["upserted"] = result.upserted_id
    value = result.document if cmd.get("new") else before
    if result.upserted and not cmd.get("new"):
        value = None
    return {"lastErrorObject": last_error, "value": _project_one(value, fields), "ok": 1.0}


def _project_one(doc: dict[str, Any] | None, fields: Any) -> dict[str, Any] | None:
    if doc is None or not fields:
        return doc
    return run_pipeline([doc], [{"$project": fields}])[0]


# -- reads --------------------------------------------------------------------------------------------
def _cursor_reply(cursor_id: int, ns: str, docs: list[Any], first: bool, pbrt: Any = None) -> dict[str, Any]:
    cursor: dict[str, Any] = {"firstBatch" if first else "nextBatch": docs}
    if pbrt is not None:
        cursor["postBatchResumeToken"] = pbrt
    cursor["id"] = Int64(cursor_id)
    cursor["ns"] = ns
    return {"cursor": cursor, "ok": 1.0}


async def _take_batch(cursor: FindCursor, batch_size: int | None) -> list[Any]:
    """Up to ``batch_size`` documents (all if None), and never much more than 16 MiB; encoding yields to
    the event loop (a default getMore can hold 100k small documents)."""
    limit = len(cursor.docs) if batch_size is None else batch_size
    start = cursor.position
    out: list[Any] = []
    size = 0
    pacer = scan.Pacer()
    for doc in cursor.docs[start : start + limit]:
        raw = RawBSONDocument(encode(doc))
        if out and size + len(raw.raw) > MAX_BATCH_BYTES:
            break
        out.append(raw)
        size += len(raw.raw)
        if len(out) % scan.SCAN_SLICE == 0:
            await pacer.pause()
    cursor.position = start + len(out)
    return out


async def _register_find_cursor(
    engine: Engine, ns: str, docs: list[Any], batch_size: int | None
) -> dict[str, Any]:
    cursor = FindCursor(0, ns, docs)
    first = await _take_batch(cursor, batch_size)
    cursor_id = 0
    if cursor.position < len(docs):
        cursor_id = engine.new_cursor_id()
        cursor.cursor_id = cursor_id
        engine.cursors[cursor_id] = cursor
    return _cursor_reply(cursor_id, ns, first, True)


def _batch_size(spec: Any, default: int | None) -> int | None:
    if spec is None:
        return default
    if not isinstance(spec, int) or isinstance(spec, bool) or spec < 0:
        raise CommandError(2, "batchSize must be a non-negative integer")
    return spec


@command("find")
async def find(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    ns = f"{db}.{coll}"
    storage = engine.storage
    meta = storage.get_meta(db, coll)
    docs: list[Any] = []
    exact = storage.by_exact_id(db, coll, cmd.get("filter") or {}) if meta is not None else None
    if meta is not None and meta.is_view:
        docs = run_pipeline(await _view_docs(engine, db, coll), _find_as_pipeline(cmd))
    elif exact is not None:
        docs = run_pipeline(exact, _find_as_pipeline(cmd)[1:]) if exact else []
    elif meta is not None:
        docs = await _scan_find(storage.collection(db, coll), cmd)
    batch = _batch_size(cmd.get("batchSize"), DEFAULT_FIRST_BATCH)
    if cmd.get("singleBatch") or (cmd.get("limit") or 0) < 0:
        return _cursor_reply(0, ns, docs[: batch or None], True)
    return await _register_find_cursor(engine, ns, docs, batch)


async def _scan_find(col: Any, cmd: dict[str, Any]) -> list[Any]:
    """find over a collection: a linear scan that yields to the loop (scan.py), then sort, skip, limit
    and projection. Unprojected results are the stored documents themselves: they are only encoded."""
    try:
        docs = await scan.matching(col, cmd.get("filter") or {})
        if cmd.get("sort"):
            docs = scan.sort_documents(docs, dict(cmd["sort"]))
        skip = int(cmd.get("skip") or 0)
        limit = abs(int(cmd.get("limit") or 0))
        docs = docs[skip : skip + limit] if limit else docs[skip:]
        if cmd.get("projection"):
            docs = await scan.project(col, docs, dict(cmd["projection"]))
        return docs
    except NotImplementedError:
        # mongomock cannot order some types (Timestamps); the emulator's own $match and $sort can.
        return run_pipeline(await scan.copies(await scan.matching(col, {})), _find_as_pipeline(cmd))
    except (mongomock.OperationFailure, ValueError, TypeError) as exc:
        raise CommandError(2, str(exc)) from exc


async def _find_docs(engine: Engine, db: str, coll: str, query: Any) -> list[Any]:
    """Copies of the documents matching ``query``, for a pipeline to work on."""
    exact = engine.storage.by_exact_id(db, coll, query)
    if exact is not None:
        return exact
    return await scan.copies(await _matching(engine, db, coll, query))


async def _matching(engine: Engine, db: str, coll: str, query: Any) -> list[Any]:
    """References to the stored documents matching ``query`` (never to be modified)."""
    col = engine.storage.collection(db, coll)
    try:
        return await scan.matching(col, query)
    except NotImplementedError:
        docs = await scan.matching(col, {})
        return run_pipeline(await scan.copies(docs), [{"$match": query}])
    except (mongomock.OperationFailure, ValueError, TypeError) as exc:
        raise CommandError(2, str(exc)) from exc


def _find_as_pipeline(cmd: dict[str, Any]) -> list[dict[str, Any]]:
    pipeline: list[dict[str, Any]] = [{"$match": cmd.get("filter") or {}}]
    if cmd.get("sort"):
        pipeline.append({"$sort": dict(cmd["sort"])})
    if cmd.get("skip"):
        pipeline.append({"$skip": int(cmd["skip"])})
    if cmd.get("limit"):
        pipeline.append({"$limit": abs(int(cmd["limit"]))})
    if cmd.get("projection"):
        pipeline.append({"$project": dict(cmd["projection"])})
    return pipeline


async def _view_docs(engine: Engine, db: str, view: str, depth: int = 0) -> list[Any]:
    meta = engine.storage.get_meta(db, view)
    if meta is None or depth > 20:
        return []
    if not meta.is_view:
        return await scan.copies(await scan.matching(engine.storage.collection(db, view), {}))
    source = await _view_docs(engine, db, meta.options["viewOn"], depth + 1)
    return run_pipeline(source, list(meta.options.get("pipeline", [])), engine.storage.client[db])


@command("getMore")
async def get_more(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    cursor_id = int(cmd["getMore"])
    cursor = engine.cursors.get(cursor_id)
    if cursor is None:
        raise CommandError(43, f"cursor id {cursor_id} not found")
    batch = _batch_size(cmd.get("batchSize"), None)
    if isinstance(cursor, ChangeStreamCursor):
        error = engine.failpoints.get_more_after_checkout()
        if error is not None:
            engine.cursors.pop(cursor_id, None)
            raise error
        if cursor.busy:
            raise CommandError(292, f"cursor id {cursor_id} is already in use")
        max_time = cmd.get("maxTimeMS")
        await_s = float(max_time) / 1000.0 if max_time else DEFAULT_AWAIT_S
        cursor.busy = True
        try:
            docs, pbrt = await cursor.next_batch(batch, await_s)
        except CommandError:
            engine.cursors.pop(cursor_id, None)
            raise
        finally:
            cursor.busy = False
        cursor.last_used = time.monotonic()
        if cursor.exhausted:
            engine.cursors.pop(cursor_id, None)
            cursor_id = 0
        elif cursor_id not in engine.cursors:
            cursor_id = 0
        return _cursor_reply(cursor_id, cursor.ns, docs, False, pbrt)
    docs = await _take_batch(cursor, batch)
    cursor.last_used = time.monotonic()
    if cursor.position >= len(cursor.docs):
        engine.cursors.pop(cursor_id, None)
        cursor_id = 0
    return _cursor_reply(cursor_id, cursor.ns, docs, False)


@command("killCursors")
async def kill_cursors(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    killed, unknown = [], []
    for cursor_id in cmd.get("cursors") or []:
        if engine.cursors.pop(int(cursor_id), None) is not None:
            killed.append(Int64(cursor_id))
        else:
            unknown.append(Int64(cursor_id))
    return {
        "cursorsKilled": killed,
        "cursorsNotFound": unknown,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    }


@command("count")
async def count(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    if engine.storage.get_meta(db, coll) is None:
        return {"n": 0, "ok": 1.0}
    n = len(await _matching(engine, db, coll, cmd.get("query") or {}))
    n = max(0, n - int(cmd.get("skip") or 0))
    if cmd.get("limit"):
        n = min(n, abs(int(cmd["limit"])))
    return {"n": n, "ok": 1.0}


@command("distinct")
async def distinct(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    if engine.storage.get_meta(db, coll) is None:
        return {"values": [], "ok": 1.0}
    key = cmd.get("key")
    if not isinstance(key, str):
        raise CommandError(14, "BSON field 'distinct.key' is the wrong type, expected type 'string'")
    docs = await _matching(engine, db, coll, cmd.get("query") or {})
    return {"values": scan.distinct_values(docs, key), "ok": 1.0}


@command("aggregate")
async def aggregate(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    target = cmd["aggregate"]
    pipeline = cmd.get("pipeline")
    if not isinstance(pipeline, list):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    cursor_opts = cmd.get("cursor")
    if not isinstance(cursor_opts, dict):
        raise CommandError(
            9, "The 'cursor' option is required, except for aggregate with the explain argument"
        )
    batch = _batch_size(cursor_opts.get("batchSize"), DEFAULT_FIRST_BATCH)
    if pipeline and isinstance(pipeline[0], dict) and "$changeStream" in pipeline[0]:
        check_read_concern(cmd.get("readConcern"))
        return _open_change_stream(engine, db, target, pipeline, batch)
    if not isinstance(target, str):
        raise CommandError(2, "collectionless aggregate is not supported by the emulator")
    meta = engine.storage.get_meta(db, target)
    ns = f"{db}.{target}"
    if meta is not None and not meta.is_view:
        # The leading $match selects by a scan that yields to the loop; a count needs no copies.
        query: dict[str, Any] = {}
        if pipeline and isinstance(pipeline[0], dict) and "$match" in pipeline[0]:
            query, pipeline = pipeline[0]["$match"], pipeline[1:]
        counter = scan.count_shape(pipeline)
        if counter is not None:
            out = counter(len(await _matching(engine, db, target, query)))
        else:
            out = run_pipeline(
                await _find_docs(engine, db, target, query), pipeline, engine.storage.client[db]
            )
        return await _register_find_cursor(engine, ns, out, batch)
    docs = await _view_docs(engine, db, target) if meta is not None else []
    out = run_pipeline(docs, pipeline, engine.storage.client[db])
    return await _register_find_cursor(engine, ns, out, batch)


def _open_change_stream(
    engine: Engine, db: str, target: Any, pipeline: list[Any], batch: int | None
) -> dict[str, Any]:
    if engine.config.standalone:
        raise CommandError(40573, "The $changeStream stage is only supported on replica sets")
    opts, spec = parse_options(pipeline[0]["$changeStream"])
    scope = scope_for(db, target, spec)
    user = pipeline[1:]
    validate_pipeline(user, engine.config.version_tuple)
    split = bool(user) and "$changeStreamSplitLargeEvent" in user[-1]
    cursor = ChangeStreamCursor(
        cursor_id=0,
        scope=scope,
        options=opts,
        pipeline=list(user[:-1] if split else user),
        next_seq=engine.oplog.end_seq,
        oplog=engine.oplog,
        storage=engine.storage,
        split_large=split,
    )
    position_cursor(cursor, spec)
    docs, pbrt = cursor.fill(batch if batch is not None else DEFAULT_FIRST_BATCH)
    cursor_id = 0
    if not cursor.exhausted:
        cursor_id = engine.new_cursor_id()
        cursor.cursor_id = cursor_id
        engine.cursors[cursor_id] = cursor
    return _cursor_reply(cursor_id, scope.ns, docs, True, pbrt)
