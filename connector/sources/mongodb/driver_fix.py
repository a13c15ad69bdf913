"""Close the socket PyMongo's async driver leaves behind when a connection attempt is cancelled.

`pymongo.pool_shared._async_create_connection` closes its new socket on OSError and timeouts, not on
CancelledError (PYTHON-5867; still so in 4.20.1). Closing a client cancels its monitors, and the
connector cancels a stuck operation after its grace (the killCursors bound, a dropped term), so any of
those that lands while a connection is being opened leaves an open socket to the garbage collector: a
file descriptor held until then, and a ResourceWarning wherever the collection happens to run.

The fix leaves the driver's own code path whole: while that function runs, the sockets it creates are
recorded for the calling task, and closed if it ends with any exception (closing one twice is harmless,
so a driver that fixes this itself is unaffected).
"""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import pool_shared

_opened: contextvars.ContextVar[list[socket.socket] | None] = contextvars.ContextVar(
    "livesync_connector_opened_sockets", default=None
)


class _RecordingSocketModule:
    """The `socket` module as `pool_shared` sees it, except that `socket.socket(...)` records the new
    socket for the task that is opening a connection."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        opened = _opened.get()
        if opened is not None:
            opened.append(sock)
        return sock


def _closing_on_failure(
    create: Callable[[Any, Any], Awaitable[socket.socket]],
) -> Callable[[Any, Any], Awaitable[socket.socket]]:
    async def create_connection(address: Any, options: Any) -> socket.socket:
        opened: list[socket.socket] = []
        token = _opened.set(opened)
        try:
            return await create(address, options)
        except BaseException:  # CancelledError above all: the one the driver misses
            for sock in opened:
                sock.close()
            raise
        finally:
            _opened.reset(token)

    create_connection.__wrapped__ = create  # type: ignore[attr-defined]
    return create_connection


def install() -> None:
    """Patch the driver once per process (idempotent). Without the function this fixes (another PyMongo
    layout) it does nothing."""
    create = getattr(pool_shared, "_async_create_connection", None)
    if create is None or hasattr(create, "__wrapped__"):
        return
    pool_shared.socket = _RecordingSocketModule()  # type: ignore[attr-defined,assignment]
    pool_shared._async_create_connection = _closing_on_failure(create)  # type: ignore[assignment]
