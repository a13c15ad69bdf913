"""What happens to an event that can never be published (ON_UNPUBLISHABLE).

`deadletter` (default) writes `{_id: token, event, reason, code, at}` to the dead-letter collection and
moves on; `skip` logs and counts it; `fail` stops the connector, and since the event never completes,
the stored position stays before it. A dead-letter write that fails is retried: the event is not
complete until it is stored somewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pymongo.errors import DuplicateKeyError, PyMongoError

from connector.errors import FatalError

log = logging.getLogger(__name__)

Policy = Literal["deadletter", "skip", "fail"]

RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # then every 5 s: never give up on an event


class UnpublishableHandler:
    """Applies the ON_UNPUBLISHABLE policy to one event."""

    def __init__(self, policy: Policy, collection: Any, *, ttl_days: int = 14) -> None:
        self.policy = policy
        self._collection = collection
        self._ttl_days = ttl_days
        self.deadlettered = 0
        self.skipped = 0

    async def ensure_indexes(self) -> None:
        """TTL index on `at`, so dead letters expire after DEADLETTER_TTL_DAYS (0 keeps them)."""
        if self.policy != "deadletter" or self._ttl_days <= 0:
            return
        try:
            await self._collection.create_index(
                "at", expireAfterSeconds=self._ttl_days * 86_400, name="at_ttl"
            )
        except PyMongoError as exc:
            # A missing index costs disk, not correctness: warn and keep going.
            log.warning("cannot create the dead-letter TTL index: %s", exc)

    async def handle(self, event: Mapping[str, Any], reason: str, code: int) -> None:
        """Dead-letter, skip, or raise FatalError; returns once the event may count as done."""
        token = event.get("_id")
        channel = event.get("_ablyChannel")
        if self.policy == "fail":
            raise FatalError(
                f"unpublishable event {_token_text(token)} (channel {channel!r}): {reason}", code=code
            )
        if self.policy == "skip":
            self.skipped += 1
            log.warning(
                "skipped unpublishable event %s: %s",
                _token_text(token),
                reason,
                extra={"code": code, "channel": channel},
            )
            return
        doc = {"_id": token, "event": dict(event), "reason": reason, "code": code, "at": datetime.now(UTC)}
        await self._insert_with_retry(doc)
        self.deadlettered += 1
        log.warning(
            "dead-lettered unpublishable event %s: %s",
            _token_text(token),
            reason,
            extra={"code": code, "channel": channel},
        )

    async def _insert_with_retry(self, doc: Mapping[str, Any]) -> None:
        attempt = 0
        while True:
            try:
                await self._collection.insert_one(dict(doc))
                return
            except DuplicateKeyError:
                return  # already dead-lettered before a restart: the same token, the same event
            except PyMongoError as exc:
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                attempt += 1
                log.error(
                    "cannot write dead letter (attempt %d, retrying in %.1fs): %s",
                    attempt,
                    delay,
                    exc,
                    extra={"code": 72001},
                )
                await asyncio.sleep(delay)


def _token_text(token: Any) -> str:
    if isinstance(token, Mapping) and isinstance(token.get("_data"), str):
        return str(token["_data"])
    return repr(token)
