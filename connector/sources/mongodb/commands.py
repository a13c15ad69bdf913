"""The MongoDB source's own commands: `token show` and `token reset` (the stored position).

Both act on this instance's own document: CONNECTOR_ID's, or with PARTITIONS > 1 its partition's
(`<CONNECTOR_ID>#<k>of<N>`, PARTITION or the host name's ordinal)."""

from __future__ import annotations

import logging

from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS

from connector.check_report import Out
from connector.config import Settings
from connector.errors import ConnectorError
from connector.sources.mongodb.checkpoint import TokenStore
from connector.sources.mongodb.client import mongo_from
from connector.sources.mongodb.lease import describe_lease

log = logging.getLogger(__name__)


async def token_show(settings: Settings, *, out: Out) -> int:
    """Print the stored resume-token document and the lease on it."""
    mongo = mongo_from(settings)
    tokens = mongo.collection(settings.resume_token_collection)
    position_id = settings.partition_spec.position_id(settings.connector_id)
    try:
        doc = await tokens.find_one({"_id": position_id})
        if doc is None or "resumeToken" not in doc:
            out(f"no resume token stored for {position_id!r}")
        if doc is not None:
            out(json_util.dumps(doc, json_options=RELAXED_JSON_OPTIONS, indent=2))
        out(await describe_lease(tokens, position_id))
        return 0
    except ConnectorError as exc:
        log.critical("%s", exc, extra={"code": exc.code})
        return 1
    finally:
        await mongo.close()


async def token_reset(settings: Settings, *, out: Out) -> int:
    """Delete the stored position (the lease is kept); the next start uses START_AT."""
    mongo = mongo_from(settings)
    position_id = settings.partition_spec.position_id(settings.connector_id)
    store = TokenStore(mongo.collection(settings.resume_token_collection, majority=True), position_id)
    try:
        deleted = await store.delete()
    except ConnectorError as exc:
        log.critical("%s", exc, extra={"code": exc.code})
        return 1
    finally:
        await mongo.close()
    out(
        f"deleted the resume token for {position_id!r}"
        if deleted
        else f"no resume token stored for {position_id!r}"
    )
    return 0
