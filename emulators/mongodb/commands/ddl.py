"""create, drop, dropDatabase, renameCollection, collMod, index commands and the list* commands."""

from __future__ import annotations

import secrets
import string
from typing import Any

from bson import SON, Binary

from ..engine import Connection, Engine, command
from ..errors import CommandError
from ..index_options import OPTIONS as INDEX_OPTIONS
from ..index_options import modify_index
from ..scan import matching_now
from ..storage import Storage
from .crud import _coll_name, _cursor_reply

# Options a create command may carry that the emulator records (and reports in create events).
_CREATE_OPTIONS = frozenset(
    {
        "capped",
        "size",
        "max",
        "validator",
        "validationLevel",
        "validationAction",
        "viewOn",
        "pipeline",
        "collation",
        "changeStreamPreAndPostImages",
        "timeseries",
        "expireAfterSeconds",
        "clusteredIndex",
    }
)


@command("create")
async def create(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    options = {k: v for k, v in cmd.items() if k in _CREATE_OPTIONS}
    if "viewOn" in options and not isinstance(options["viewOn"], str):
        raise CommandError(2, "'viewOn' option must be a string")
    engine.storage.create_collection(db, coll, options)
    return {"ok": 1.0}


@command("drop")
async def drop(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    # Since 7.0 dropping a missing collection succeeds (earlier servers said "ns not found").
    existed = engine.storage.drop_collection(db, coll)
    if not existed and engine.config.version_tuple < (7, 0):
        raise CommandError(26, "ns not found")
    return {"ns": f"{db}.{coll}", "nIndexesWas": 1, "ok": 1.0}


@command("dropDatabase")
async def drop_database(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    if db in engine.storage.meta:
        engine.storage.drop_database(db)
    return {"dropped": db, "ok": 1.0}


def _split_ns(ns: Any) -> tuple[str, str]:
    if not isinstance(ns, str) or "." not in ns:
        raise CommandError(73, f"Invalid namespace specified '{ns}'")
    db, _, coll = ns.partition(".")
    return db, coll


@command("renameCollection")
async def rename_collection(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    if db != "admin":
        raise CommandError(13, "renameCollection may only be run against the admin database.")
    src_db, src = _split_ns(cmd.get("renameCollection"))
    dst_db, dst = _split_ns(cmd.get("to"))
    drop_target = bool(cmd.get("dropTarget"))
    if src_db == dst_db:
        engine.storage.rename(src_db, src, dst_db, dst, drop_target)
    else:
        _rename_across_databases(engine.storage, src_db, src, dst_db, dst, drop_target)
    return {"ok": 1.0}


_STAGING_CHARS = string.ascii_letters + string.digits


def _rename_across_databases(
    storage: Storage, src_db: str, src: str, dst_db: str, dst: str, drop: bool
) -> None:
    """mongod (7.0) renames across databases by copying: it creates a staging collection
    `tmp<5 characters>.renameCollection` in the target database, gives it the source's indexes and then
    its documents, renames it over the target and drops the source. Each step is its own oplog entry, so
    streams on the target database and on the cluster see the staging collection's create,
    createIndexes (one per index) and inserts, then a rename from it; the source's streams see a drop
    (jstests/change_streams/ddl_rename_cross_db.js)."""
    meta = storage.get_meta(src_db, src)
    if meta is None or meta.is_view:
        storage.rename(src_db, src, dst_db, dst, drop)  # its errors (26, ...) or a view's rename
        return
    if storage.get_meta(dst_db, dst) is not None and not drop:
        raise CommandError(48, f"target namespace exists: {dst_db}.{dst}")
    staging = "tmp" + "".join(secrets.choice(_STAGING_CHARS) for _ in range(5)) + ".renameCollection"
    storage.create_collection(dst_db, staging, dict(meta.options))
    source = storage.collection(src_db, src)
    for name, spec in source.index_information().items():
        if name != "_id_":
            options = {k: v for k, v in spec.items() if k in INDEX_OPTIONS}
            storage.create_indexes(dst_db, staging, [{"key": dict(spec["key"]), "name": name, **options}])
    for doc in matching_now(source, {}):
        storage.insert(dst_db, staging, doc)
    storage.rename(dst_db, staging, dst_db, dst, drop)
    storage.drop_collection(src_db, src)


@command("collMod")
async def coll_mod(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    options = {
        k: v
        for k, v in cmd.items()
        if k != "collMod"
        and not k.startswith("$")
        and k not in ("lsid", "writeConcern", "comment", "txnNumber", "maxTimeMS")
    }
    index = options.pop("index", None)  # an index's options, not the collection's
    reply = {} if index is None else modify_index(engine.storage, db, coll, index)
    if options or index is None:
        engine.storage.coll_mod(db, coll, options)
    return {**reply, "ok": 1.0}


@command("createIndexes")
async def create_indexes(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    created_collection = engine.storage.get_meta(db, coll) is None
    before, after = engine.storage.create_indexes(db, coll, list(cmd.get("indexes") or []))
    return {
        "numIndexesBefore": before,
        "numIndexesAfter": after,
        "createdCollectionAutomatically": created_collection,
        "ok": 1.0,
    }


@command("dropIndexes", "deleteIndexes")
async def drop_indexes(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    was = engine.storage.drop_indexes(db, coll, cmd.get("index"))
    return {"nIndexesWas": was, "ok": 1.0}


def _collection_info(name: str, meta: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": name,
        "type": "view" if meta.is_view else "collection",
        "options": dict(meta.options),
        "info": {"readOnly": meta.is_view},
    }
    if not meta.is_view:
        info["info"]["uuid"] = Binary.from_uuid(meta.uuid)
        info["idIndex"] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    return info


@command("listCollections")
async def list_collections(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    from ..aggregation import run_pipeline

    infos = [_collection_info(name, meta) for name, meta in sorted(engine.storage.meta.get(db, {}).items())]
    if cmd.get("filter"):
        infos = run_pipeline(infos, [{"$match": cmd["filter"]}])
    if cmd.get("nameOnly"):
        infos = [{"name": i["name"], "type": i["type"]} for i in infos]
    return _cursor_reply(0, f"{db}.$cmd.listCollections", infos, True)


@command("listIndexes")
async def list_indexes(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    coll = _coll_name(cmd)
    if engine.storage.get_meta(db, coll) is None:
        raise CommandError(26, f"ns does not exist: {db}.{coll}")
    info = engine.storage.collection(db, coll).index_information()
    specs = []
    for name, spec in info.items():
        entry: dict[str, Any] = {"v": 2, "key": SON(spec["key"]), "name": name}
        for option in INDEX_OPTIONS:
            if option in spec:
                entry[option] = spec[option]
        specs.append(entry)
    return _cursor_reply(0, f"{db}.$cmd.listIndexes.{coll}", specs, True)


@command("listDatabases")
async def list_databases(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    names = sorted(name for name, colls in engine.storage.meta.items() if colls)
    dbs = [{"name": name, "sizeOnDisk": 8192, "empty": False} for name in names]
    if cmd.get("nameOnly"):
        dbs = [{"name": d["name"]} for d in dbs]
    return {"databases": dbs, "totalSize": 8192 * len(dbs), "ok": 1.0}
