"""Reading a change stream in tests until a known event, bounded in time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: A healthy emulator delivers in milliseconds; a lost event fails the test instead of hanging it.
EVENT_WAIT_S = 10.0


async def events_until(stream: Any, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The events read up to and including the first for which `last` is true."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(EVENT_WAIT_S):
        while True:
            event = await stream.try_next()
            if event is None:
                continue
            events.append(event)
            if last(event):
                return events
