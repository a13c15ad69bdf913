"""Waiting for a condition, and reading what the Ably emulator delivered: shared by the in-process suites
(MongoDB in tests/integration, Postgres in tests/postgres)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

WAIT_TIMEOUT_S = 20.0


async def until(
    predicate: Callable[[], Any], *, timeout: float = WAIT_TIMEOUT_S, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def delivered(ably: Any, channel: str | None = None, *, decoded_as: str = "event") -> list[dict[str, Any]]:
    """Messages the Ably emulator delivered (duplicates by id already dropped), with JSON `data` decoded
    into the key `decoded_as`."""
    out = []
    for msg in ably.messages(channel=channel):
        msg = dict(msg)
        if msg.get("encoding") == "json":
            msg[decoded_as] = orjson.loads(msg["data"])
        out.append(msg)
    return out


async def wait_delivered(
    ably: Any,
    count: int,
    *,
    channel: str | None = None,
    timeout: float = WAIT_TIMEOUT_S,
    decoded_as: str = "event",
) -> list[dict[str, Any]]:
    await until(
        lambda: len(ably.messages(channel=channel)) >= count, timeout=timeout, what=f"{count} messages"
    )
    return delivered(ably, channel, decoded_as=decoded_as)
