"""Writes the connector cannot give up on (a dead letter, a spilled message): retried while MongoDB fails.

The events involved stay in flight until the write succeeds, so the only way forward is to keep trying,
with a growing delay and one ERROR line per attempt; a lost lease (LeadershipLost) ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

__all__ = ["RETRY_DELAYS_S", "retry_forever"]

RETRY_DELAYS_S: Final = (0.1, 0.5, 1.0, 2.0, 5.0)  # then every 5 s
T = TypeVar("T")


async def retry_forever(what: str, operation: Callable[[], Awaitable[T]], *, code: int) -> T:
    """`operation()` until it does not raise a PyMongoError (other errors propagate)."""
    attempt = 0
    while True:
        try:
            return await operation()
        except PyMongoError as exc:
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            attempt += 1
            log.error(
                "cannot %s (attempt %d, retrying in %.1fs): %s",
                what,
                attempt,
                delay,
                exc,
                extra={"code": code},
            )
            await asyncio.sleep(delay)
