"""One seam over the two supported drivers: PyMongo's native async API (default) and Motor.

Both expose the same collection and change-stream shapes; they differ only in whether `watch()` must be
awaited and whether `close()` is a coroutine. Everything else in the connector uses the objects returned
here and never imports a driver module directly.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from bson import Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import ReadPreference, WriteConcern
from pymongo.errors import ServerSelectionTimeoutError

from connector.sources.mongodb import driver_fix

if TYPE_CHECKING:
    from connector.config import Settings
from connector.sources.mongodb.cursor import BatchStream, ChangeStreamCursor, DriverStreamBatches
from connector.sources.mongodb.decode import EVENT_CODEC_OPTIONS, RAW_CODEC_OPTIONS

DriverName = Literal["pymongo", "motor"]

# Everything the connector reads decodes as change events do (decode.py): naive UTC datetimes, binary
# subtype 4 left as `Binary`, any date and any string MongoDB stores.
CODEC_OPTIONS: CodecOptions[dict[str, Any]] = EVENT_CODEC_OPTIONS
MAJORITY = WriteConcern(w="majority")
#: Topologies where every primary-preference command reaches the member holding a cursor.
PINNED_TOPOLOGIES = frozenset({"Single", "ReplicaSetWithPrimary"})


def pins_getmores(driver: DriverName, read_preference_mode: int, topology_type: str) -> bool:
    """Whether getMores sent as plain commands reach the cursor's server: PyMongo, a primary read
    preference, one server or a replica set with a primary. Not through several mongos or a load balancer,
    nor with a non-primary read preference (only the driver pins a cursor's getMores there), nor Motor."""
    return (
        driver == "pymongo"
        and read_preference_mode == ReadPreference.PRIMARY.mode
        and topology_type in PINNED_TOPOLOGIES
    )


SERVER_SELECTION_TIMEOUT_MS = 10_000


class Mongo:
    """A connected client plus the handful of operations the connector performs."""

    def __init__(
        self, uri: str, database: str, *, driver: DriverName = "pymongo", app_name: str = ""
    ) -> None:
        self.driver = driver
        kwargs: dict[str, Any] = {
            "appname": app_name or "livesync-connector",
            "tz_aware": False,
            "uuidRepresentation": "unspecified",
            # What the client decodes itself (a deployment-wide stream through the driver: `client.watch()`
            # takes no codec options) decodes every value MongoDB stores, as CODEC_OPTIONS do (the driver
            # accepts only its own error handlers: invalid UTF-8 is replaced there, but not counted).
            "datetime_conversion": DatetimeConversion.DATETIME_AUTO,
            "unicode_decode_error_handler": "replace",
        }
        if "serverselectiontimeoutms" not in uri.lower():  # keyword arguments would override the URI's
            kwargs["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
        if driver == "motor":
            from motor.motor_asyncio import AsyncIOMotorClient

            self.client: Any = AsyncIOMotorClient(uri, **kwargs)
        else:
            from pymongo import AsyncMongoClient

            driver_fix.install()
            self.client = AsyncMongoClient(uri, **kwargs)
        self.db: Any = self.client.get_database(database, codec_options=CODEC_OPTIONS)
        self._closed = False
        self._version: tuple[int, ...] | None = None

    async def server_version(self) -> tuple[int, ...]:
        """The server's (or mongos') version, e.g. (7, 0, 12); asked once per client."""
        if self._version is None:
            info = await self.db.command("buildInfo")
            parts = info.get("versionArray") or [int(p) for p in re.findall(r"\d+", info["version"])[:3]]
            self._version = tuple(int(p) for p in parts[:3])
        return self._version

    def collection(self, name: str, *, majority: bool = False) -> Any:
        return self.db.get_collection(
            name, codec_options=CODEC_OPTIONS, write_concern=MAJORITY if majority else None
        )

    async def getmores_reach_the_cursor(self) -> bool:
        """True where a command sent with a primary read preference always reaches the member holding the
        cursor: a single server or a replica set's primary (after a failover the new primary answers
        CursorNotFound, which resumes). The topology is discovered first if it is not known yet."""
        if self.driver == "pymongo" and self.client.topology_description.topology_type_name in (
            "Unknown",
            "ReplicaSetNoPrimary",
        ):
            await self.db.command("ping")  # waits (server selection) for a primary, or fails
        return pins_getmores(
            self.driver, self.db.read_preference.mode, self.client.topology_description.topology_type_name
        )

    async def watch_batches(
        self,
        collection: str,
        pipeline: Sequence[Mapping[str, Any]],
        *,
        max_await_time_ms: int,
        deployment: bool = False,
        batch_size: int | None = None,
        full_document: str | None = None,
        full_document_before_change: str | None = None,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        start_at_operation_time: Timestamp | None = None,
    ) -> BatchStream:
        """Open a change stream read a batch at a time (`cursor.ChangeStreamCursor`) where every getMore
        reaches the server holding the cursor, else the driver's own stream, one event per batch.

        `deployment`: every database (`collection` must be empty), as `client.watch()` opens it: an
        aggregate on `admin` with `allChangesForCluster`."""
        if not await self.getmores_reach_the_cursor():
            options: dict[str, Any] = {
                "max_await_time_ms": max_await_time_ms,
                "batch_size": batch_size,
                "full_document": full_document,
                "full_document_before_change": full_document_before_change,
                "resume_after": resume_after,
                "start_after": start_after,
                "start_at_operation_time": start_at_operation_time,
            }
            # Raw events: DriverStreamBatches decodes each one, so one bad event cannot fail the stream.
            # A client has no with_options: its events arrive decoded, with the client's codec options.
            target = self.client if deployment else self._watch_target(collection)
            stream = target.watch(list(pipeline), **{k: v for k, v in options.items() if v})
            if inspect.isawaitable(stream):  # PyMongo async: watch() is a coroutine; Motor: it is not.
                stream = await stream
            return DriverStreamBatches(stream)
        stage: dict[str, Any] = {"allChangesForCluster": True} if deployment else {}
        if full_document:
            stage["fullDocument"] = full_document
        if full_document_before_change:
            stage["fullDocumentBeforeChange"] = full_document_before_change
        cursor = ChangeStreamCursor(
            self.client.get_database("admin", codec_options=CODEC_OPTIONS) if deployment else self.db,
            collection,
            pipeline,
            change_stream_options=stage,
            max_await_time_ms=max_await_time_ms,
            batch_size=batch_size,
            resume_after=start_after or resume_after,
            start_after=start_after is not None,
            start_at_operation_time=start_at_operation_time,
        )
        await cursor.open()
        return cursor

    def _watch_target(self, collection: str) -> Any:
        return (self.db.get_collection(collection) if collection else self.db).with_options(
            codec_options=RAW_CODEC_OPTIONS
        )

    async def command(self, command: Mapping[str, Any], *, db: str | None = None) -> Mapping[str, Any]:
        target = self.client.get_database(db) if db else self.db
        result: Mapping[str, Any] = await target.command(dict(command))
        return result

    async def close(self) -> None:
        """Close the client; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        result = self.client.close()
        if inspect.isawaitable(result):
            await result


# "host:port: [Errno 111] Connect call failed ('127.0.0.1', 1)" — one per server in PyMongo's message.
_SERVER_ERRNO = re.compile(r"(?P<address>[^\s,]+:\d+): \[Errno (?P<errno>-?\d+)\] (?P<text>[^(,]*)")


def brief_error(exc: BaseException) -> str:
    """PyMongo's error in one line: the cause per server, without the topology description.

    A server-selection timeout's text carries the whole topology description (hundreds of characters);
    the reader needs only `cannot connect to 127.0.0.1:1: connection refused`. Callers log the full text
    at DEBUG.
    """
    text = str(exc)
    if not isinstance(exc, ServerSelectionTimeoutError):
        # An OperationFailure's text ends with the whole reply (", full error: {...}"): the code is in it.
        return text.split(", Topology Description: ")[0].split(", full error: ")[0]
    head = text.split(", Timeout: ")[0]
    causes = []
    for match in _SERVER_ERRNO.finditer(head):
        errno = int(match["errno"])
        reason = os.strerror(errno) if errno > 0 else match["text"].strip()
        causes.append(f"cannot connect to {match['address']}: {reason.lower()}")
    if causes:
        return "; ".join(causes)
    return re.sub(r"\s*\(configured timeouts:[^)]*\)", "", head)


def mongo_from(settings: Settings) -> Mongo:
    """The client the settings describe (the source's, and `check`'s and `token`'s)."""
    return Mongo(settings.mongodb_uri, settings.mongodb_database, driver=settings.mongo_driver)
