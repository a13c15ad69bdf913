"""Unified-format operations the transactions spec files add: session and transaction operations, the
remaining CRUD helpers, and the test runner's collection/index/session assertions.

Same contract as `operations.py`: a handler takes the resolved target and the operation's `arguments`,
returns the result in the shape `expectResult` describes, and refuses arguments it does not interpret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from pymongo import (
    DeleteMany,
    DeleteOne,
    InsertOne,
    ReplaceOne,
    ReturnDocument,
    UpdateMany,
    UpdateOne,
)
from pymongo.client_session_shared import _TxnState
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from tests.conformance.operations import _reject_unknown, _update_result, read_preference, session_of

if TYPE_CHECKING:
    from tests.conformance.unified import TestContext

__all__ = ["SESSION_OPERATIONS", "transaction_options", "write_concern"]


_WRITE_CONCERN_KEYS: Final = {"w": "w", "journal": "j", "wtimeoutMS": "wtimeout"}


def write_concern(spec: Mapping[str, Any]) -> WriteConcern:
    """A unified-format writeConcern (`w`, `journal`, `wtimeoutMS`) as a PyMongo WriteConcern."""
    _reject_unknown(spec, set(_WRITE_CONCERN_KEYS), "writeConcern")
    return WriteConcern(**{_WRITE_CONCERN_KEYS[key]: value for key, value in spec.items()})


def transaction_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Unified-format transaction options (`readConcern`, `writeConcern`, ...) as PyMongo keywords."""
    _reject_unknown(options, {"readConcern", "writeConcern", "readPreference", "maxCommitTimeMS"}, "options")
    out: dict[str, Any] = {}
    if "readConcern" in options:
        out["read_concern"] = ReadConcern(**options["readConcern"])
    if "writeConcern" in options:
        out["write_concern"] = write_concern(options["writeConcern"])
    if "readPreference" in options:
        out["read_preference"] = read_preference(options["readPreference"])
    if "maxCommitTimeMS" in options:
        out["max_commit_time_ms"] = options["maxCommitTimeMS"]
    return out


async def start_transaction(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    await target.start_transaction(**transaction_options(arguments))


async def commit_transaction(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, set(), "commitTransaction")
    await target.commit_transaction()


async def abort_transaction(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, set(), "abortTransaction")
    await target.abort_transaction()


async def end_session(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, set(), "endSession")
    await target.end_session()


async def insert_many(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"documents", "ordered"}, "insertMany")
    result = await target.insert_many(
        list(arguments["documents"]),
        ordered=arguments.get("ordered", True),
        session=session_of(ctx, arguments),
    )
    return {"insertedIds": {str(index): _id for index, _id in enumerate(result.inserted_ids)}}


async def update_many(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "update", "upsert"}, "updateMany")
    result = await target.update_many(
        arguments["filter"],
        arguments["update"],
        upsert=arguments.get("upsert", False),
        session=session_of(ctx, arguments),
    )
    return _update_result(result)


async def delete_many(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter"}, "deleteMany")
    result = await target.delete_many(arguments["filter"], session=session_of(ctx, arguments))
    return {"deletedCount": result.deleted_count}


_RETURN_DOCUMENT: Final = {"Before": ReturnDocument.BEFORE, "After": ReturnDocument.AFTER}


async def find_one_and_update(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "update", "upsert", "returnDocument"}, "findOneAndUpdate")
    return await target.find_one_and_update(
        arguments["filter"],
        arguments["update"],
        upsert=arguments.get("upsert", False),
        return_document=_RETURN_DOCUMENT[arguments.get("returnDocument", "Before")],
        session=session_of(ctx, arguments),
    )


async def find_one_and_replace(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "replacement", "upsert", "returnDocument"}, "findOneAndReplace")
    return await target.find_one_and_replace(
        arguments["filter"],
        arguments["replacement"],
        upsert=arguments.get("upsert", False),
        return_document=_RETURN_DOCUMENT[arguments.get("returnDocument", "Before")],
        session=session_of(ctx, arguments),
    )


async def find_one_and_delete(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter"}, "findOneAndDelete")
    return await target.find_one_and_delete(arguments["filter"], session=session_of(ctx, arguments))


async def find(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "batchSize", "sort", "limit"}, "find")
    cursor = target.find(
        arguments.get("filter", {}),
        batch_size=arguments.get("batchSize", 0),
        sort=list(arguments["sort"].items()) if "sort" in arguments else None,
        limit=arguments.get("limit", 0),
        session=session_of(ctx, arguments),
    )
    return await cursor.to_list()


async def aggregate(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"pipeline", "batchSize", "maxTimeMS"}, "aggregate")
    options: dict[str, Any] = {}
    if "batchSize" in arguments:
        options["batchSize"] = arguments["batchSize"]
    if "maxTimeMS" in arguments:
        options["maxTimeMS"] = arguments["maxTimeMS"]
    cursor = await target.aggregate(
        list(arguments["pipeline"]), session=session_of(ctx, arguments), **options
    )
    return await cursor.to_list()


async def count_documents(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter"}, "countDocuments")
    return await target.count_documents(arguments["filter"], session=session_of(ctx, arguments))


async def count(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """The deprecated `count` command (PyMongo 4 has no helper for it)."""
    _reject_unknown(arguments, {"filter"}, "count")
    command = {"count": target.name, "query": arguments.get("filter", {})}
    reply = await target.database.command(command, session=session_of(ctx, arguments))
    return reply["n"]


async def distinct(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"fieldName", "filter"}, "distinct")
    return await target.distinct(
        arguments["fieldName"], arguments.get("filter", {}), session=session_of(ctx, arguments)
    )


def _write_model(request: Mapping[str, Any]) -> Any:
    ((kind, spec),) = request.items()
    if kind == "insertOne":
        return InsertOne(spec["document"])
    if kind == "updateOne":
        return UpdateOne(spec["filter"], spec["update"], upsert=spec.get("upsert", False))
    if kind == "updateMany":
        return UpdateMany(spec["filter"], spec["update"], upsert=spec.get("upsert", False))
    if kind == "replaceOne":
        return ReplaceOne(spec["filter"], spec["replacement"], upsert=spec.get("upsert", False))
    if kind == "deleteOne":
        return DeleteOne(spec["filter"])
    if kind == "deleteMany":
        return DeleteMany(spec["filter"])
    raise AssertionError(f"unknown bulkWrite request {kind}")


async def bulk_write(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"requests", "ordered"}, "bulkWrite")
    result = await target.bulk_write(
        [_write_model(request) for request in arguments["requests"]],
        ordered=arguments.get("ordered", True),
        session=session_of(ctx, arguments),
    )
    return {
        "deletedCount": result.deleted_count,
        "insertedCount": result.inserted_count,
        "matchedCount": result.matched_count,
        "modifiedCount": result.modified_count,
        "upsertedCount": result.upserted_count,
        "upsertedIds": {str(index): _id for index, _id in (result.upserted_ids or {}).items()},
    }


async def create_entities(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"entities"}, "createEntities")
    ctx.create_entities(arguments["entities"])


async def _collection_names(ctx: TestContext, arguments: Mapping[str, Any]) -> list[str]:
    database = ctx.internal_client()[arguments["databaseName"]]
    return list(await database.list_collection_names())


async def assert_collection_exists(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"databaseName", "collectionName"}, "assertCollectionExists")
    if arguments["collectionName"] not in await _collection_names(ctx, arguments):
        raise AssertionError(f"collection {arguments['collectionName']} does not exist")


async def assert_collection_not_exists(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"databaseName", "collectionName"}, "assertCollectionNotExists")
    if arguments["collectionName"] in await _collection_names(ctx, arguments):
        raise AssertionError(f"collection {arguments['collectionName']} exists")


async def _index_names(ctx: TestContext, arguments: Mapping[str, Any]) -> list[str]:
    collection = ctx.internal_client()[arguments["databaseName"]][arguments["collectionName"]]
    return [index["name"] async for index in await collection.list_indexes()]


async def assert_index_exists(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"databaseName", "collectionName", "indexName"}, "assertIndexExists")
    if arguments["indexName"] not in await _index_names(ctx, arguments):
        raise AssertionError(f"index {arguments['indexName']} does not exist")


async def assert_index_not_exists(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"databaseName", "collectionName", "indexName"}, "assertIndexNotExists")
    if arguments["indexName"] in await _index_names(ctx, arguments):
        raise AssertionError(f"index {arguments['indexName']} exists")


#: PyMongo's private _TxnState constants, by value.
_STATE_NAMES: Final = {
    value: name.lower() for name, value in vars(_TxnState).items() if not name.startswith("_")
}


async def assert_session_transaction_state(
    ctx: TestContext, target: Any, arguments: Mapping[str, Any]
) -> Any:
    """The driver's view of the session's transaction (none, starting, in_progress, committed, aborted)."""
    _reject_unknown(arguments, {"state"}, "assertSessionTransactionState")
    session = session_of(ctx, arguments)
    state = session._transaction.state  # PyMongo exposes the state only on this private attribute
    name = _STATE_NAMES[state]
    expected = arguments["state"]
    if name != expected and not (expected == "committed" and name == "committed_empty"):
        raise AssertionError(f"session transaction state is {name}, expected {expected}")


SESSION_OPERATIONS: Final = {
    "startTransaction": start_transaction,
    "commitTransaction": commit_transaction,
    "abortTransaction": abort_transaction,
    "endSession": end_session,
    "insertMany": insert_many,
    "updateMany": update_many,
    "deleteMany": delete_many,
    "findOneAndUpdate": find_one_and_update,
    "findOneAndReplace": find_one_and_replace,
    "findOneAndDelete": find_one_and_delete,
    "find": find,
    "aggregate": aggregate,
    "countDocuments": count_documents,
    "count": count,
    "distinct": distinct,
    "bulkWrite": bulk_write,
    "createEntities": create_entities,
    "assertCollectionExists": assert_collection_exists,
    "assertCollectionNotExists": assert_collection_not_exists,
    "assertIndexExists": assert_index_exists,
    "assertIndexNotExists": assert_index_not_exists,
    "assertSessionTransactionState": assert_session_transaction_state,
}
