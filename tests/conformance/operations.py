"""The unified-format operations the change-stream spec files use, mapped onto PyMongo's async API.

Each handler takes the resolved target object (an entity, or the runner for `testRunner` operations) and
the operation's `arguments`, and returns the operation's result in the shape the spec's `expectResult`
describes. Anything a file uses that is not here fails the test with "unsupported operation" instead of
passing silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.read_preferences import make_read_preference, read_pref_mode_from_name
from pymongo.results import DeleteResult, InsertOneResult, UpdateResult

if TYPE_CHECKING:
    from tests.conformance.unified import TestContext

__all__ = ["ITERATE_TIMEOUT_S", "OPERATIONS", "IterationTimeoutError", "UnsupportedError"]

#: Bound on one iterateUntilDocumentOrError. An idle getMore waits 1 s (awaitData) and a resume may need a
#: server-selection round, so 15 s only trips when an expected event never arrives.
ITERATE_TIMEOUT_S: Final = 15.0

#: createChangeStream argument (camelCase in the spec) -> `watch()` keyword.
_WATCH_OPTIONS: Final = {
    "batchSize": "batch_size",
    "comment": "comment",
    "fullDocument": "full_document",
    "fullDocumentBeforeChange": "full_document_before_change",
    "showExpandedEvents": "show_expanded_events",
    "resumeAfter": "resume_after",
    "startAfter": "start_after",
    "startAtOperationTime": "start_at_operation_time",
    "maxAwaitTimeMS": "max_await_time_ms",
    "collation": "collation",
}


class UnsupportedError(AssertionError):
    """Raised when a spec file uses an operation, argument or entity this runner does not interpret."""


class IterationTimeoutError(AssertionError):
    """Raised when a change stream produced neither a document nor an error within ITERATE_TIMEOUT_S."""


Handler = Callable[["TestContext", Any, Mapping[str, Any]], Awaitable[Any]]


def _reject_unknown(arguments: Mapping[str, Any], known: set[str], operation: str) -> None:
    unknown = set(arguments) - known - {"session"}
    if unknown:
        raise UnsupportedError(f"{operation}: arguments {sorted(unknown)} are not supported by this runner")


def session_of(ctx: TestContext, arguments: Mapping[str, Any]) -> Any:
    """The session entity an operation names in its `session` argument, or None."""
    name = arguments.get("session")
    return None if name is None else ctx.entities[name]


async def create_change_stream(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """`watch()` on a client, database or collection entity."""
    _reject_unknown(arguments, {"pipeline", *_WATCH_OPTIONS}, "createChangeStream")
    options = {_WATCH_OPTIONS[key]: value for key, value in arguments.items() if key != "pipeline"}
    stream = await target.watch(list(arguments.get("pipeline", [])), **options)
    ctx.track_stream(stream)
    return stream


async def iterate_until_document_or_error(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """Block until the stream yields one document or raises, bounded by ITERATE_TIMEOUT_S."""
    _reject_unknown(arguments, set(), "iterateUntilDocumentOrError")
    if not isinstance(target, AsyncChangeStream):
        raise UnsupportedError(f"iterateUntilDocumentOrError on {type(target).__name__}")
    try:
        async with asyncio.timeout(ITERATE_TIMEOUT_S):
            return await target.next()
    except TimeoutError:
        raise IterationTimeoutError(
            f"no change event and no error within {ITERATE_TIMEOUT_S:g} s "
            f"(resume_token={target.resume_token})"
        ) from None


def _update_result(result: UpdateResult) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "matchedCount": result.matched_count,
        "modifiedCount": result.modified_count,
        "upsertedCount": 0 if result.upserted_id is None else 1,
    }
    if result.upserted_id is not None:
        doc["upsertedId"] = result.upserted_id
    return doc


async def insert_one(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"document", "comment"}, "insertOne")
    result: InsertOneResult = await target.insert_one(
        arguments["document"], comment=arguments.get("comment"), session=session_of(ctx, arguments)
    )
    return {"insertedId": result.inserted_id}


async def update_one(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "update", "upsert", "comment"}, "updateOne")
    result = await target.update_one(
        arguments["filter"],
        arguments["update"],
        upsert=arguments.get("upsert", False),
        comment=arguments.get("comment"),
        session=session_of(ctx, arguments),
    )
    return _update_result(result)


async def replace_one(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "replacement", "upsert", "comment"}, "replaceOne")
    result = await target.replace_one(
        arguments["filter"],
        arguments["replacement"],
        upsert=arguments.get("upsert", False),
        comment=arguments.get("comment"),
        session=session_of(ctx, arguments),
    )
    return _update_result(result)


async def delete_one(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"filter", "comment"}, "deleteOne")
    result: DeleteResult = await target.delete_one(
        arguments["filter"], comment=arguments.get("comment"), session=session_of(ctx, arguments)
    )
    return {"deletedCount": result.deleted_count}


async def run_command(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """`database.command()`; the command document keeps its key order (command name first)."""
    _reject_unknown(arguments, {"command", "commandName", "readPreference"}, "runCommand")
    if "readPreference" in arguments:
        preference = read_preference(arguments["readPreference"])
        return await target.command(
            dict(arguments["command"]), read_preference=preference, session=session_of(ctx, arguments)
        )
    return await target.command(dict(arguments["command"]), session=session_of(ctx, arguments))


def read_preference(spec: Mapping[str, Any]) -> Any:
    """A unified-format readPreference document (`{mode: "primary"}`) as a PyMongo read preference."""
    _reject_unknown(spec, {"mode"}, "readPreference")
    return make_read_preference(read_pref_mode_from_name(spec["mode"]), None)


async def drop_collection(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"collection"}, "dropCollection")
    await target.drop_collection(arguments["collection"])
    return None


async def create_collection(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """`create` with options (e.g. viewOn); check_exists=False so no extra listCollections is sent."""
    options = {key: value for key, value in arguments.items() if key not in ("collection", "session")}
    await target.create_collection(
        arguments["collection"], check_exists=False, session=session_of(ctx, arguments), **options
    )
    return None


async def create_index(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"keys", "name", "unique"}, "createIndex")
    options = {key: value for key, value in arguments.items() if key not in ("keys", "session")}
    return await target.create_index(
        list(arguments["keys"].items()), session=session_of(ctx, arguments), **options
    )


async def drop_index(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    _reject_unknown(arguments, {"name"}, "dropIndex")
    await target.drop_index(arguments["name"])
    return None


async def rename(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """`renameCollection` within the same database (`to` is a collection name), e.g. with dropTarget."""
    _reject_unknown(arguments, {"to", "dropTarget"}, "rename")
    options = {"dropTarget": arguments["dropTarget"]} if "dropTarget" in arguments else {}
    await target.rename(arguments["to"], **options)
    return None


async def fail_point(ctx: TestContext, target: Any, arguments: Mapping[str, Any]) -> Any:
    """testRunner.failPoint: configure on the named client and remember it so the runner turns it off."""
    _reject_unknown(arguments, {"client", "failPoint"}, "failPoint")
    await ctx.configure_fail_point(arguments["client"], arguments["failPoint"])
    return None


OPERATIONS: Final[dict[str, Handler]] = {
    "createChangeStream": create_change_stream,
    "iterateUntilDocumentOrError": iterate_until_document_or_error,
    "insertOne": insert_one,
    "updateOne": update_one,
    "replaceOne": replace_one,
    "deleteOne": delete_one,
    "runCommand": run_command,
    "dropCollection": drop_collection,
    "createCollection": create_collection,
    "createIndex": create_index,
    "dropIndex": drop_index,
    "rename": rename,
    "failPoint": fail_point,
}
