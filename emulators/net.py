"""What both emulators' TCP servers need: closing a listener without leaving accepted sockets behind."""

from __future__ import annotations

import asyncio

# Once accepting has stopped, how long the loop runs what the sockets accepted last still have queued
# (accept task, transport, connection_made, handler task): each step is ready at once, so many iterations.
ACCEPTED_HANDLER_GRACE_S = 0.05


async def close_server(server: asyncio.Server) -> None:
    """Stop accepting, let the sockets accepted last reach their handlers, then close the listener.

    On Python 3.11 a socket accepted just before ``Server.close()`` gets its transport afterwards, which
    fails in ``Server._attach()`` silently: nothing closes that socket but the garbage collector, and its
    ResourceWarning fails whichever test is running then (3.12 fixed it, and added ``close_clients``).
    """
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(ACCEPTED_HANDLER_GRACE_S)
    server.close()
