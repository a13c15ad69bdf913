"""Where the tests find a MongoDB: env `MONGODB_TEST_URI`, else the in-process emulator on its own thread.

Shared by the conformance runner and the emulator's own tests (`tests/emulators/mongodb`). The emulator runs
on its own event loop in a daemon thread (`emulators.mongodb.run_in_thread`), so it outlives each test's
function-scoped loop and blocking PyMongo clients can talk to it from the test thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["EMULATOR_SERVER_VERSION", "URI_ENV", "emulator_unavailable_reason", "mongodb_uri"]

URI_ENV: Final = "MONGODB_TEST_URI"

#: The emulator presents itself as a 7.0 single-node replica set: the version the spec's applicability and
#: the connector's supported range are judged against.
EMULATOR_SERVER_VERSION: Final = "7.0.0"
EMULATOR_REPLSET: Final = "rs0"


def emulator_unavailable_reason() -> str | None:
    """Why the emulator cannot be imported (still being built, or broken), or None if it can."""
    try:
        from emulators.mongodb import run_in_thread  # noqa: F401
    except ImportError as exc:
        return f"MongoDB emulator not importable ({exc}); set {URI_ENV} to test a real server"
    return None


@contextmanager
def mongodb_uri(**emulator_options: Any) -> Iterator[str]:
    """Yield a connection string: `MONGODB_TEST_URI` if set, else a fresh emulator's (stopped on exit)."""
    configured = os.environ.get(URI_ENV)
    if configured:
        yield configured
        return
    from emulators.mongodb import run_in_thread

    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "replset": EMULATOR_REPLSET,
        "server_version": EMULATOR_SERVER_VERSION,
        **emulator_options,
    }
    with run_in_thread(**options) as server:
        yield str(server.uri)
