"""PostgreSQL connections, and the one boundary where psycopg's exceptions become ours.

Driver: **psycopg 3** (`psycopg[binary]`), used through its native asyncio API (`AsyncConnection`).
Why it rather than asyncpg: it is libpq itself, so `POSTGRES_URI` means exactly what it means to psql
and to Ably's connector (URIs and `key=value` strings, `sslmode`, service files, `PG*` variables);
LISTEN/NOTIFY is a plain async iterator (`notifies()`); it ships type information, so the source
type-checks under mypy --strict without stubs; and `sql.Identifier` quotes the configurable table
names. asyncpg's binary protocol is faster per row, but reading the outbox is not where the time goes
(see the benchmark): Ably round trips are.

Error classification (by SQLSTATE class, never message text):
- no SQLSTATE (the connection broke, the server is unreachable), class 08 (connection exception),
  57 (operator intervention: shutdown, cannot connect now), 53 (insufficient resources) and 40
  (serialization failure, deadlock): `DatabaseUnavailable` — retried; the outbox keeps every row.
- class 42 (undefined table/column/function, insufficient privilege) and 3F (no such schema):
  `SchemaError` — fatal, with a hint to run `livesync-connector create-tables` or `check`.
- anything else: `DatabaseUnavailable`, since retrying a statement loses nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import psycopg

from connector.errors import DatabaseUnavailable, SchemaError

__all__ = ["APPLICATION_NAME", "CONNECT_TIMEOUT_S", "classify", "connect", "mapped_errors"]

APPLICATION_NAME: Final = "livesync-connector"
#: libpq's connect_timeout: an unreachable server fails a connection attempt within this many seconds.
CONNECT_TIMEOUT_S: Final = 5
_SCHEMA_CLASSES: Final = ("42", "3F")

Connection = psycopg.AsyncConnection[tuple[object, ...]]


def classify(exc: psycopg.Error, doing: str) -> DatabaseUnavailable | SchemaError:
    """Our error for a psycopg error raised while `doing` (e.g. "reading the outbox")."""
    state = exc.sqlstate or ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state[:2] in _SCHEMA_CLASSES:
        return SchemaError(
            f"{doing}: {detail} (SQLSTATE {state}); run `livesync-connector check` "
            "(and `create-tables` if tables are missing)"
        )
    return DatabaseUnavailable(f"{doing}: {detail}" + (f" (SQLSTATE {state})" if state else ""))


@contextlib.contextmanager
def mapped_errors(doing: str) -> Iterator[None]:
    """Re-raise any psycopg error as DatabaseUnavailable or SchemaError (see the module docstring)."""
    try:
        yield
    except psycopg.Error as exc:
        raise classify(exc, doing) from exc


async def connect(conninfo: str, *, purpose: str) -> Connection:
    """An autocommit connection named `livesync-connector <purpose>` (visible in pg_stat_activity)."""
    with mapped_errors(f"connecting to PostgreSQL ({purpose})"):
        return await psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=True,
            application_name=f"{APPLICATION_NAME} {purpose}",
            connect_timeout=CONNECT_TIMEOUT_S,
        )


async def close_quietly(conn: Connection | None) -> None:
    """Close a connection that may already be broken; closing twice is harmless."""
    if conn is not None:
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()
