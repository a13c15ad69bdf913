"""SOURCE → its package: the one module outside a source's package that names it.

Each entry builds the source for the runtime and lists the source's commands (`check` for every
source, then its own). Imports are lazy: a process loads only the source it runs (psycopg or the MongoDB
driver, not both).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.check_report import Out
from connector.config import Settings
from connector.sources.protocol import Source

Command = Callable[[Settings, Out], Coroutine[Any, Any, int]]


@dataclass(frozen=True, slots=True)
class SourceEntry:
    name: str
    build: Callable[[Settings], Source]
    #: Command name (as typed: `check`, `create-tables`, `token show`) → its coroutine; exit status.
    commands: Mapping[str, Command] = field(default_factory=dict)
    #: Why a command of another source does not apply here, when that deserves more than its name.
    refusals: Mapping[str, str] = field(default_factory=dict)


def _build_mongodb(settings: Settings) -> Source:
    from connector.sources.mongodb.source import MongoSource

    return MongoSource(settings)


def _build_postgres(settings: Settings) -> Source:
    from connector.sources.postgres.source import PostgresSource

    return PostgresSource(settings)


async def _mongodb_check(settings: Settings, out: Out) -> int:
    from connector.sources.mongodb.check import run_checks

    return await run_checks(settings, out=out)


async def _token_show(settings: Settings, out: Out) -> int:
    from connector.sources.mongodb.commands import token_show

    return await token_show(settings, out=out)


async def _token_reset(settings: Settings, out: Out) -> int:
    from connector.sources.mongodb.commands import token_reset

    return await token_reset(settings, out=out)


async def _postgres_check(settings: Settings, out: Out) -> int:
    from connector.sources.postgres.check import run_checks

    return await run_checks(settings, out=out)


async def _create_tables(settings: Settings, out: Out) -> int:
    from connector.sources.postgres.check import run_create_tables

    return await run_create_tables(settings, out=out)


SOURCES: dict[str, SourceEntry] = {
    "mongodb": SourceEntry(
        "mongodb",
        _build_mongodb,
        {"check": _mongodb_check, "token show": _token_show, "token reset": _token_reset},
    ),
    "postgres": SourceEntry(
        "postgres",
        _build_postgres,
        {"check": _postgres_check, "create-tables": _create_tables},
        refusals={"token": "token commands apply to SOURCE=mongodb (the outbox itself is the position)"},
    ),
}


def entry(source: str) -> SourceEntry:
    return SOURCES[source]


def build_source(settings: Settings) -> Source:
    return SOURCES[settings.source].build(settings)
