"""The MongoDB lease: a `lease` field on the resume-token document (`RESUME_TOKEN_COLLECTION`, `_id:
CONNECTOR_ID`), `{owner, epoch, expiresAt, acquiredAt}`.

Keeping the lease on the token document makes fencing one atomic check: the token write's filter names the
owner and epoch (`TokenStore` with a fence), so a deposed leader's write matches nothing. Expiry is
computed by the server (`$$NOW` in an update pipeline), never from this host's clock. Writes use
majority write concern, like the token: a lease acknowledged only by a primary that then rolls back could
be granted twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from connector.errors import LeaseStoreError
from connector.leadership import LeaseInfo
from connector.sources.mongodb.client import brief_error


def _takeable_by(owner: str) -> dict[str, Any]:
    """The lease can be taken when nobody ever held it, its expiry (server clock) has passed, or it is
    this INSTANCE_ID's own: a sidecar restarted in place (same pod name, pid 1) reclaims its lease at
    once instead of waiting for it to expire. INSTANCE_ID must therefore be unique among running
    instances (the default, `<hostname>-<pid>`, is)."""
    return {
        "$or": [
            {"$eq": [{"$type": "$lease.expiresAt"}, "missing"]},
            {"$lte": ["$lease.expiresAt", "$$NOW"]},
            {"$eq": ["$lease.owner", owner]},
        ]
    }


# A released lease keeps owner and epoch (the next holder increments it) and expires at the epoch start.
_RELEASED = datetime(1970, 1, 1)


class MongoLeaseStore:
    """`connector.leadership.LeaseStore` on a driver collection (majority write concern)."""

    def __init__(self, collection: Any, connector_id: str) -> None:
        self._collection = collection
        self.connector_id = connector_id

    async def acquire(self, owner: str, ttl_s: float) -> int | None:
        granted = [
            {
                "$set": {
                    "lease": {
                        "owner": owner,
                        "epoch": {"$add": [{"$ifNull": ["$lease.epoch", 0]}, 1]},
                        "expiresAt": {"$add": ["$$NOW", _ms(ttl_s)]},
                        "acquiredAt": "$$NOW",
                    }
                }
            }
        ]
        try:
            doc = await self._collection.find_one_and_update(
                {"_id": self.connector_id, "$expr": _takeable_by(owner)},
                granted,
                upsert=True,
                projection={"lease.epoch": 1},
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None  # the document exists and its lease is held: the upsert's insert collided
        except PyMongoError as exc:
            raise LeaseStoreError(f"cannot acquire the lease: {brief_error(exc)}") from exc
        return int(doc["lease"]["epoch"])

    async def renew(self, owner: str, epoch: int, ttl_s: float) -> bool:
        try:
            result = await self._collection.update_one(
                {"_id": self.connector_id, "lease.owner": owner, "lease.epoch": epoch},
                [{"$set": {"lease.expiresAt": {"$add": ["$$NOW", _ms(ttl_s)]}}}],
            )
        except PyMongoError as exc:
            raise LeaseStoreError(f"cannot renew the lease: {brief_error(exc)}") from exc
        return bool(result.matched_count)

    async def release(self, owner: str, epoch: int) -> None:
        try:
            await self._collection.update_one(
                {"_id": self.connector_id, "lease.owner": owner, "lease.epoch": epoch},
                {"$set": {"lease.expiresAt": _RELEASED}},
            )
        except PyMongoError as exc:
            raise LeaseStoreError(f"cannot release the lease: {brief_error(exc)}") from exc

    async def read(self) -> LeaseInfo | None:
        try:
            doc = await self._collection.find_one({"_id": self.connector_id}, {"lease": 1})
        except PyMongoError as exc:
            raise LeaseStoreError(f"cannot read the lease: {brief_error(exc)}") from exc
        return lease_info(doc)

    async def close(self) -> None:
        """Nothing to leave: the collection belongs to the source's client."""


def lease_info(doc: Any) -> LeaseInfo | None:
    """The lease part of a token document, if it has one."""
    lease = doc.get("lease") if isinstance(doc, dict) else None
    if not isinstance(lease, dict):
        return None
    expires = lease.get("expiresAt")
    return LeaseInfo(
        owner=str(lease.get("owner", "")),
        epoch=int(lease.get("epoch", 0)),
        expires_at=expires if isinstance(expires, datetime) else None,
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


async def describe_lease(collection: Any, connector_id: str) -> str:
    """One line for `token show`: who leads, at which epoch, until when (judged by the server's clock)."""
    store = MongoLeaseStore(collection, connector_id)
    info = await store.read()
    if info is None:
        return "lease: never held (no instance has run with this CONNECTOR_ID since leases exist)"
    try:
        live = await collection.find_one(
            {"_id": connector_id, "$expr": {"$gt": ["$lease.expiresAt", "$$NOW"]}}, {"_id": 1}
        )
    except PyMongoError as exc:
        raise LeaseStoreError(f"cannot read the lease: {brief_error(exc)}") from exc
    until = info.expires_at.isoformat() + "Z" if info.expires_at else "unknown"
    state = "held" if live else "free (expired or released)"
    return f"lease: {state}; last holder {info.owner} at epoch {info.epoch}, expiry {until}"
