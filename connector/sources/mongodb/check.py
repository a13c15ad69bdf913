"""`livesync-connector check`: prove the configuration works before deploying, publishing nothing.

Each check prints one line (`ok` / `FAIL` with the reason and the managed connector's code); the exit
status is 0 only when every check passed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from connector.check_report import Out, Report, check_ably
from connector.config import Settings
from connector.sources.mongodb.client import Mongo, brief_error, mongo_from
from connector.sources.mongodb.namespaces import describe_filters, kept
from connector.sources.mongodb.partitions import PartitionedMongo
from connector.sources.mongodb.pipeline import sets_channel, split_supported
from connector.sources.mongodb.stream import StartPosition, open_stream, stream_options

log = logging.getLogger(__name__)


async def run_checks(settings: Settings, *, out: Out, mongo: Mongo | None = None) -> int:
    report = Report(out)
    stages = settings.pipeline_stages()
    report.ok(f"configuration valid; pipeline has {len(stages)} stage(s)")
    report.ok(f"watching {_watch_text(settings)}")
    if not sets_channel(stages):
        report.warn("no pipeline stage sets _ablyChannel: every event would be unpublishable (72004)")
    owned = mongo is None
    mongo = mongo or mongo_from(settings)
    try:
        await _check_mongo(settings, mongo, report)
    finally:
        if owned:
            await mongo.close()
    await check_ably(settings, report)
    return report.finish()


def _watch_text(settings: Settings) -> str:
    """The mode, what it reads and the namespace filters, as `check` prints them."""
    mode = settings.watch_mode
    if mode == "collection":
        return f"collection {settings.watch_label} (MONGODB_WATCH=collection)"
    filters = describe_filters(settings.include, settings.exclude)
    if mode == "database":
        return f"database {settings.mongodb_database} (MONGODB_WATCH=database); {filters}"
    return (
        f"the whole deployment (MONGODB_WATCH=deployment; every database but admin, config and local); "
        f"{filters}; the connector's own collections in {settings.mongodb_database} left out"
    )


async def _check_mongo(settings: Settings, mongo: Mongo, report: Report) -> None:
    try:
        hello = await mongo.command({"hello": 1}, db="admin")
    except PyMongoError as exc:
        log.debug("MongoDB unreachable", exc_info=exc)
        report.fail(f"MongoDB unreachable: {brief_error(exc)}", 72003)
        return
    if hello.get("msg") == "isdbgrid":
        report.ok("MongoDB reachable (sharded cluster via mongos)")
    elif hello.get("setName"):
        report.ok(f"MongoDB reachable (replica set {hello['setName']!r}, wire {hello.get('maxWireVersion')})")
    else:
        report.fail(
            "MongoDB is a standalone server: change streams need a replica set or sharded cluster", 72003
        )
        return
    options = stream_options(settings, max_await_time_ms=100)
    partition = settings.partition_spec
    streams = mongo
    if partition.split:
        streams = PartitionedMongo(mongo, partition, user_stages=len(options.pipeline))
    try:
        stream = await open_stream(streams, options, StartPosition())
        await stream.close()
        report.ok(f"change stream opens on {settings.watch_label} with the pipeline and options")
        if isinstance(streams, PartitionedMongo):
            where = "server-side ($toHashedIndexKey)"
            if streams.filtering != "server":
                where = "client-side (no $toHashedIndexKey before 7.0: every partition receives every event)"
            report.ok(f"{partition.describe()}: channels filtered {where}")
    except Exception as exc:  # reported, not raised: `check` lists every problem it can find
        report.fail(f"cannot open a change stream on {settings.watch_label}: {brief_error(exc)}", 72003)
    await _check_large_events(mongo, report)
    await _check_images(settings, mongo, report)


async def _check_large_events(mongo: Mongo, report: Report) -> None:
    """Whether events over 16 MiB are split and reassembled, or lose their bodies server-side."""
    try:
        version = await mongo.server_version()
    except PyMongoError as exc:
        report.warn(f"cannot read the server version (buildInfo): {brief_error(exc)}")
        return
    shown = ".".join(str(part) for part in version)
    if split_supported(version):
        report.ok(
            f"MongoDB {shown} supports $changeStreamSplitLargeEvent: events over 16 MiB are split "
            "and reassembled"
        )
    else:
        report.warn(
            f"MongoDB {shown} has no $changeStreamSplitLargeEvent (7.0, 6.0.9+): an event over 16 MiB "
            "is published without its document bodies (truncated)"
        )


def _needs_images(settings: Settings) -> bool:
    return (
        settings.full_document in ("whenAvailable", "required")
        or settings.full_document_before_change != "off"
    )


async def _check_images(settings: Settings, mongo: Mongo, report: Report) -> None:
    if not _needs_images(settings):
        return
    if settings.watch_mode == "deployment":
        report.warn(
            "pre- and post-images are not checked for a deployment-wide watch: enable "
            "changeStreamPreAndPostImages on every collection the options need them on"
        )
        return
    flt: dict[str, Any] = {"name": settings.mongodb_collection} if settings.mongodb_collection else {}
    try:
        cursor = await mongo.db.list_collections(filter=flt)
        infos: list[Mapping[str, Any]] = [info async for info in cursor]
    except (OperationFailure, PyMongoError) as exc:
        report.fail(f"cannot list collections to check pre- and post-images: {brief_error(exc)}", 72003)
        return
    own = (settings.resume_token_collection, settings.deadletter_collection, settings.overflow_collection)
    missing = [
        info["name"]
        for info in infos
        if info.get("type", "collection") == "collection"
        and not info.get("options", {}).get("changeStreamPreAndPostImages", {}).get("enabled")
        and info["name"] not in own
        and kept(settings.mongodb_database, info["name"], settings.include, settings.exclude)
    ]
    if settings.mongodb_collection and not infos:
        report.warn(f"collection {settings.watch_label} does not exist yet")
    elif missing:
        required = "required" in (settings.full_document, settings.full_document_before_change)
        text = (
            f"pre- and post-images are not enabled on {', '.join(sorted(missing))}; enable with "
            "collMod changeStreamPreAndPostImages: {enabled: true}"
        )
        if required:
            report.fail(text, 72003)
        else:
            report.warn(text + " (whenAvailable: images will be missing)")
    else:
        report.ok("pre- and post-images enabled where the options need them")
