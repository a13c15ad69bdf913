"""Documents, collections and indexes on mongomock, with every change recorded in the oplog.

mongomock does the matching, updating and index bookkeeping; this module decides *what happened*
(pre-image, post-image, update description, implicit collection creation) and appends the change
event. All calls are synchronous and short: they run on the emulator's event loop.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

import mongomock
from bson import SON, ObjectId
from mongomock import store as mm_store
from pymongo.errors import DuplicateKeyError

from . import updates
from .bsonvalues import encode, same, same_id
from .docstore import (
    NO_KEY,
    check_unique_partial,
    duplicate_key,
    exact_id,
    insert_into_store,
    mongomock_error,
    naive_dates,
    replace_in_store,
    storable,
    store_key,
)
from .errors import CommandError
from .index_options import OPTIONS as INDEX_OPTIONS
from .index_options import check_partial_filter, check_same_name
from .oplog import Oplog, OplogEntry
from .scan import matching_now, sort_documents
from .topology import ClusterClock, wall_time
from .update_ops import UpdateContext, apply_update, check_replacement_fields, validate_update
from .update_ops import upsert_seed as updates_seed


def _no_lazy_expiry(self: mm_store.CollectionStore) -> None:
    """mongod deletes expired documents in its TTL monitor's passes, each with a delete event (ttl.py);
    mongomock would hide them from every read at once, with no event, scanning the collection on each
    access to do it."""


mm_store.CollectionStore._remove_expired_documents = _no_lazy_expiry  # type: ignore[method-assign]

# The server's document size limit (maxBsonObjectSize).
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024

SYSTEM_DATABASES = frozenset({"admin", "config", "local"})


@dataclass(slots=True)
class CollectionMeta:
    """What mongomock does not track: identity, creation options, views."""

    uuid: uuid.UUID
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def pre_post_images(self) -> bool:
        spec = self.options.get("changeStreamPreAndPostImages")
        return isinstance(spec, dict) and bool(spec.get("enabled"))

    @property
    def is_view(self) -> bool:
        return "viewOn" in self.options


@dataclass(slots=True)
class UpdateResult:
    matched: int = 0
    modified: int = 0
    upserted_id: Any = None
    # True when an upsert inserted a document (its `_id` may be null, so upserted_id cannot tell).
    upserted: bool = False
    document: dict[str, Any] | None = None  # findAndModify: the chosen pre- or post-image


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as mongod inserts it (fixDocumentForInsert): `_id` first, generated if missing."""
    if "_id" not in doc:
        return {"_id": ObjectId(), **doc}
    if next(iter(doc)) != "_id":
        return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


class Storage:
    def __init__(
        self, oplog: Oplog, clock: ClusterClock, server_version: tuple[int, ...] = (7, 0, 0)
    ) -> None:
        self.oplog = oplog
        self.clock = clock
        self.server_version = server_version
        self.client: mongomock.MongoClient = mongomock.MongoClient(tz_aware=True)
        self.meta: dict[str, dict[str, CollectionMeta]] = {}
        self._handles: dict[tuple[str, str], Any] = {}

    def reset(self) -> None:
        self.client = mongomock.MongoClient(tz_aware=True)
        self.meta.clear()
        self._handles.clear()

    # -- bookkeeping ----------------------------------------------------------------------------------
    def record(self, op: str, db: str, coll: str | None, **fields: Any) -> OplogEntry:
        ts = self.clock.tick()
        entry = OplogEntry(ts=ts, wall=wall_time(), op=op, db=db, coll=coll, **fields)
        self.oplog.append(entry)
        return entry

    def get_meta(self, db: str, coll: str) -> CollectionMeta | None:
        return self.meta.get(db, {}).get(coll)

    def collection(self, db: str, coll: str) -> Any:
        # mongomock builds a new Collection (parsing codec options) per lookup; handles stay valid across
        # drops because they point at the same per-name store.
        handle = self._handles.get((db, coll))
        if handle is None:
            handle = self._handles[(db, coll)] = self.client[db][coll]
        return handle

    def ensure(self, db: str, coll: str) -> CollectionMeta:
        """The collection's metadata, creating it implicitly (with a `create` event) on first write."""
        meta = self.get_meta(db, coll)
        if meta is None:
            meta = self.create_collection(db, coll, {})
        if meta.is_view:
            raise CommandError(166, f"Namespace {db}.{coll} is a view, not a collection")
        return meta

    def create_collection(self, db: str, coll: str, options: dict[str, Any]) -> CollectionMeta:
        if self.get_meta(db, coll) is not None:
            raise CommandError(48, f"Collection {db}.{coll} already exists.")
        meta = CollectionMeta(uuid=uuid.uuid4(), options=dict(options))
        self.meta.setdefault(db, {})[coll] = meta
        if not meta.is_view:
            self.client[db].create_collection(coll)
        description: dict[str, Any] = {}
        if meta.is_view:
            description = {"viewOn": options["viewOn"], "pipeline": list(options.get("pipeline", []))}
        else:
            description = {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
            description.update({k: v for k, v in options.items() if k != "viewOn"})
        self.record(
            "create",
            db,
            coll,
            collection_uuid=None if meta.is_view else meta.uuid,
            extra={"operationDescription": description, "nsType": "view" if meta.is_view else "collection"},
            expanded=True,
        )
        return meta

    def _images(self, meta: CollectionMeta, pre: dict[str, Any] | None, post: dict[str, Any] | None) -> dict:
        if not meta.pre_post_images:
            return {}
        return {"pre_image": pre, "post_image": post}

    # -- writes ---------------------------------------------------------------------------------------
    def prepare_insert(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The document as mongod inserts it and its stored form, checked (fixDocumentForInsert: nesting,
        `_id`, top-level empty timestamps filled in); WireError when the whole command is refused."""
        doc = _id_first(doc)
        return doc, storable(doc, insert=True, tick=self.clock.tick)

    def insert(
        self, db: str, coll: str, doc: dict[str, Any], prepared: tuple[dict, dict] | None = None
    ) -> None:
        meta = self.ensure(db, coll)
        doc, stored = prepared or self.prepare_insert(doc)
        col = self.collection(db, coll)
        try:
            insert_into_store(col, doc, stored=stored)
        except DuplicateKeyError as exc:
            raise duplicate_key(col, f"{db}.{coll}", doc, None) from exc
        except CommandError:
            raise  # e.g. a transaction's WriteConflict
        except Exception as exc:
            raise mongomock_error(exc) from exc
        self.record(
            "insert",
            db,
            coll,
            document_key={"_id": doc["_id"]},
            full_document=doc,
            collection_uuid=meta.uuid,
            **self._images(meta, None, doc),
        )

    def _matching_ids(self, db: str, coll: str, query: dict[str, Any], sort: Any, limit: int) -> list[Any]:
        key = exact_id(query)
        if key is not NO_KEY:
            # The common `{_id: value}` write: a dictionary lookup instead of mongomock's full scan.
            return [key] if store_key(key) in self.collection(db, coll)._store else []
        try:
            docs = matching_now(self.collection(db, coll), query)
        except NotImplementedError:  # values mongomock cannot order: the emulator's own $match
            from .aggregation import run_pipeline

            docs = run_pipeline(matching_now(self.collection(db, coll), {}), [{"$match": query}])
        if sort:
            try:
                docs = sort_documents(docs, dict(sort))
            except NotImplementedError:
                from .aggregation import run_pipeline

                docs = run_pipeline(docs, [{"$sort": dict(sort)}])
        if limit:
            docs = docs[:limit]
        return [d["_id"] for d in docs]

    def by_exact_id(self, db: str, coll: str, query: Any) -> list[dict[str, Any]] | None:
        """[doc] or [] when ``query`` is exactly `{_id: value}`; None when it is any other query."""
        key = exact_id(query) if isinstance(query, dict) else NO_KEY
        if key is NO_KEY:
            return None
        doc = self.find_one_by_id(db, coll, key)
        return [doc] if doc is not None else []

    def find_one_by_id(self, db: str, coll: str, _id: Any) -> dict[str, Any] | None:
        """A private copy of the document with this `_id` (mongomock 4.3.0 stores them by `_id`)."""
        try:
            return copy.deepcopy(self.collection(db, coll)._store[store_key(_id)])
        except KeyError:
            return None

    def update(
        self,
        db: str,
        coll: str,
        query: dict[str, Any],
        update: Any,
        *,
        multi: bool = False,
        upsert: bool = False,
        sort: Any = None,
        array_filters: Any = None,
    ) -> UpdateResult:
        replacement = not isinstance(update, list) and not updates.is_operator_update(update)
        if replacement and not isinstance(update, dict):
            raise CommandError(9, "the update must be a document or a pipeline")
        if replacement and multi:
            raise CommandError(9, "multi update is not supported for replacement-style update")
        if not replacement and not isinstance(update, list):
            validate_update(update)  # parsed before matching, as mongod does
        if self.get_meta(db, coll) is None and not upsert:
            return UpdateResult()  # like the server: no implicit creation without an upsert
        meta = self.ensure(db, coll)
        try:
            ids = self._matching_ids(db, coll, query, sort, 0 if multi else 1)
        except Exception as exc:
            raise mongomock_error(exc) from exc
        result = UpdateResult(matched=len(ids))
        if not ids:
            if upsert:
                self._upsert(db, coll, meta, query, update, array_filters, result)
            return result
        col = self.collection(db, coll)
        ctx = UpdateContext(query, array_filters, self.clock.tick)
        for _id in ids:
            pre = self.find_one_by_id(db, coll, _id)
            if pre is None:
                continue
            post = self._new_version(pre, update, ctx, replacement)
            result.document = post
            if post == pre and list(post) == list(pre) and same(post, pre):
                continue  # binary-equal (mongod writes nothing); 1 -> 1.0 or 0.0 -> -0.0 is a change
            self._store(col, post, replace_id=_id, replacement=replacement)
            result.modified += 1
            self._record_update(db, coll, meta, pre, post, update, replacement)
        return result

    def _new_version(self, pre: dict[str, Any], update: Any, ctx: UpdateContext, replacement: bool) -> dict:
        if replacement:
            if "_id" in update and not same_id(update["_id"], pre["_id"]):
                raise CommandError(
                    66,
                    "After applying the update, the (immutable) field '_id' was found to have been altered",
                )
            check_replacement_fields(update)
            return {"_id": pre["_id"], **{k: v for k, v in update.items() if k != "_id"}}
        if isinstance(update, list):
            from .aggregation import run_pipeline

            out = run_pipeline([pre], update)
            if len(out) != 1:
                raise CommandError(2, "an update pipeline must produce exactly one document")
            post = out[0]
            if not same_id(post.get("_id"), pre["_id"]):
                raise CommandError(
                    66, "Performing an update on the path '_id' would modify the immutable field"
                )
            return post
        return apply_update(pre, update, ctx)

    def _store(
        self, col: Any, doc: dict[str, Any], replace_id: Any = NO_KEY, *, replacement: bool = False
    ) -> None:
        """Insert ``doc`` (an upsert), or replace the document with `_id` ``replace_id`` (which may be
        null); a replacement's top-level Timestamp(0, 0) fields get the current time, as on an insert."""
        if len(encode(doc)) > MAX_DOCUMENT_SIZE:
            raise CommandError(17419, f"Resulting document after update is larger than {MAX_DOCUMENT_SIZE}")
        try:
            if replace_id is NO_KEY:
                insert_into_store(col, doc, stored=storable(doc, insert=True, tick=self.clock.tick))
            else:
                tick = self.clock.tick if replacement else None
                replace_in_store(col, replace_id, doc, stored=storable(doc, insert=False, tick=tick))
        except DuplicateKeyError as exc:
            own_id = None if replace_id is NO_KEY else replace_id
            raise duplicate_key(col, col.full_name, doc, own_id) from exc
        except CommandError:
            raise
        except Exception as exc:
            raise mongomock_error(exc) from exc

    def _upsert(
        self,
        db: str,
        coll: str,
        meta: CollectionMeta,
        query: dict,
        update: Any,
        array_filters: Any,
        result: UpdateResult,
    ) -> None:
        seed = updates_seed(query)
        if isinstance(update, list) or updates.is_operator_update(update):
            ctx = UpdateContext(query, array_filters, self.clock.tick, is_insert=True)
            if isinstance(update, list):
                from .aggregation import run_pipeline

                post = run_pipeline([seed], update)[0]
            else:
                post = apply_update(seed, update, ctx)
        else:
            check_replacement_fields(update)
            post = {k: v for k, v in update.items()}
            if "_id" in seed and "_id" not in post:
                post = {"_id": seed["_id"], **post}
        post = _id_first(post)
        self._store(self.collection(db, coll), post)
        result.upserted_id = post["_id"]
        result.upserted = True
        result.document = post
        self.record(
            "insert",
            db,
            coll,
            document_key={"_id": post["_id"]},
            full_document=post,
            collection_uuid=meta.uuid,
            **self._images(meta, None, post),
        )

    def _record_update(
        self,
        db: str,
        coll: str,
        meta: CollectionMeta,
        pre: dict[str, Any],
        post: dict[str, Any],
        update: Any,
        replacement: bool,
    ) -> None:
        key = {"_id": post["_id"]}
        desc: dict[str, Any] | None = None
        if isinstance(update, list):
            desc = updates.describe_diff(pre, post)  # None: the server would log a full replacement
        elif not replacement:
            desc = updates.describe_operator_update(pre, post, update)
        if desc is None:
            self.record(
                "replace",
                db,
                coll,
                document_key=key,
                full_document=post,
                collection_uuid=meta.uuid,
                **self._images(meta, pre, post),
            )
            return
        ambiguous = updates.disambiguated_paths(pre, post, desc)
        self.record(
            "update",
            db,
            coll,
            document_key=key,
            update_description=desc,
            collection_uuid=meta.uuid,
            extra={"disambiguatedPaths": ambiguous},
            # Kept privately so fullDocument: updateLookup falls back sanely after a delete.
            **self._images(meta, pre, post),
        )

    def delete(self, db: str, coll: str, query: dict[str, Any], limit: int, sort: Any = None) -> list[dict]:
        meta = self.get_meta(db, coll)
        if meta is None:
            return []
        if meta.is_view:
            raise CommandError(166, f"Namespace {db}.{coll} is a view, not a collection")
        col = self.collection(db, coll)
        removed = []
        for _id in self._matching_ids(db, coll, query, sort, limit):
            pre = self.find_one_by_id(db, coll, _id)
            if pre is None:
                continue
            del col._store[store_key(_id)]
            removed.append(pre)
            self.record(
                "delete",
                db,
                coll,
                document_key={"_id": _id},
                collection_uuid=meta.uuid,
                **self._images(meta, pre, None),
            )
        return removed

    # -- DDL ------------------------------------------------------------------------------------------
    def drop_collection(self, db: str, coll: str) -> bool:
        meta = self.meta.get(db, {}).pop(coll, None)
        if meta is None:
            return False
        if not meta.is_view:
            self.client[db].drop_collection(coll)
        self.record("drop", db, coll, collection_uuid=None if meta.is_view else meta.uuid)
        return True

    def drop_database(self, db: str) -> None:
        colls = list(self.meta.get(db, {}))
        for coll in colls:
            self.drop_collection(db, coll)
        self.meta.pop(db, None)
        self.client.drop_database(db)
        self.record("dropDatabase", db, None)

    def rename(self, db: str, coll: str, to_db: str, to_coll: str, drop_target: bool) -> None:
        meta = self.get_meta(db, coll)
        if meta is None:
            raise CommandError(26, f"Source collection {db}.{coll} does not exist")
        target = self.get_meta(to_db, to_coll)
        if target is not None and not drop_target:
            raise CommandError(48, f"target namespace exists: {to_db}.{to_coll}")
        docs = matching_now(self.collection(db, coll), {})
        indexes = self.collection(db, coll).index_information()
        if target is not None:
            self.meta[to_db].pop(to_coll)
            self.client[to_db].drop_collection(to_coll)
        self.meta[db].pop(coll)
        self.client[db].drop_collection(coll)
        self.meta.setdefault(to_db, {})[to_coll] = meta
        new = self.client[to_db][to_coll]
        self.client[to_db].create_collection(to_coll)
        for doc in docs:
            insert_into_store(new, doc)
        for name, spec in indexes.items():
            if name != "_id_":
                new.create_index(spec["key"], name=name, unique=spec.get("unique", False))
        description: dict[str, Any] = {"to": {"db": to_db, "coll": to_coll}}
        if target is not None:
            description["dropTarget"] = target.uuid
        self.record(
            "rename",
            db,
            coll,
            collection_uuid=meta.uuid,
            extra={"to": {"db": to_db, "coll": to_coll}, "operationDescription": description},
        )

    def create_indexes(self, db: str, coll: str, specs: list[dict[str, Any]]) -> tuple[int, int]:
        meta = self.ensure(db, coll)
        col = self.collection(db, coll)
        before = len(col.index_information())
        created = []
        for spec in specs:
            key = spec.get("key")
            name = spec.get("name")
            if not isinstance(key, dict) or not key or not name:
                raise CommandError(9, "index specs need a non-empty 'key' document and a 'name'")
            if "partialFilterExpression" in spec:  # compared with stored documents: naive UTC dates
                spec = {**spec, "partialFilterExpression": naive_dates(spec["partialFilterExpression"])}
            check_partial_filter(name, key, spec)
            info = col.index_information()
            existing = info.get(name)
            if existing is not None and check_same_name(name, existing, key, spec):
                continue
            partial = spec.get("partialFilterExpression")
            same_key = [
                n
                for n, s in info.items()
                if list(s["key"]) == list(key.items()) and s.get("partialFilterExpression") == partial
            ]
            if same_key:
                raise CommandError(
                    85, f"Index already exists with a different name: {same_key[0]} (requested {name})"
                )
            options = {k: v for k, v in spec.items() if k in INDEX_OPTIONS}
            try:
                if options.get("unique") and partial is not None:
                    # mongomock checks the existing documents as if the index were not partial.
                    check_unique_partial(col, list(key), partial)
                    col.create_index(list(key.items()), name=name, **{**options, "unique": False})
                    col._store.indexes[name]["unique"] = True
                else:
                    col.create_index(list(key.items()), name=name, **options)
            except Exception as exc:
                raise mongomock_error(exc) from exc
            created.append({"v": 2, "key": SON(key.items()), "name": name, **options})
        if created:
            self.record(
                "createIndexes",
                db,
                coll,
                collection_uuid=meta.uuid,
                extra={"operationDescription": {"indexes": created}},
                expanded=True,
            )
        return before, len(col.index_information())

    def drop_indexes(self, db: str, coll: str, index: Any) -> int:
        meta = self.get_meta(db, coll)
        if meta is None:
            raise CommandError(26, f"ns not found {db}.{coll}")
        col = self.collection(db, coll)
        info = col.index_information()
        if index == "*":
            names = [n for n in info if n != "_id_"]
        elif isinstance(index, str):
            names = [index]
        elif isinstance(index, list):
            names = [str(n) for n in index]
        else:
            names = [n for n, spec in info.items() if list(spec["key"]) == list(dict(index).items())]
            if not names:
                raise CommandError(27, f"can't find index with key: {index}")
        for name in names:
            if name == "_id_":
                raise CommandError(72, "cannot drop _id index")
            if name not in info:
                raise CommandError(27, f"index not found with name [{name}]")
        for name in names:
            spec = info[name]
            col.drop_index(name)
            self.record(
                "dropIndexes",
                db,
                coll,
                collection_uuid=meta.uuid,
                extra={
                    "operationDescription": {"indexes": [{"v": 2, "key": SON(spec["key"]), "name": name}]}
                },
                expanded=True,
            )
        return len(info)

    def coll_mod(self, db: str, coll: str, options: dict[str, Any]) -> None:
        meta = self.get_meta(db, coll)
        if meta is None:
            raise CommandError(26, f"ns does not exist: {db}.{coll}")
        old = {k: meta.options[k] for k in options if k in meta.options}
        meta.options.update(options)
        description: dict[str, Any] = dict(options)
        self.record(
            "modify",
            db,
            coll,
            collection_uuid=meta.uuid,
            extra={"operationDescription": description, "stateBeforeChange": {"collectionOptions": old}},
            expanded=True,
        )
