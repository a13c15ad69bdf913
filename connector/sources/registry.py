"""SOURCE → its package: the one module outside a source's package that names it.

Each entry builds the source for the runtime and lists the source's commands (`check` for every source,
then its own). The one `Settings` is composed here from the shared settings and each source's part, so a
new source adds its part to the class below and its entry to SOURCES. Imports of the runtime side are
lazy: a process loads only the source it runs.

A settings part (`connector/sources/<name>/settings.py`) is a pydantic model derived from
`SourceSelection` with: `SOURCE`, `EMPTY_IS_A_VALUE`, `OWN_FILE_FIELDS`, `MASKS`, `ALIASES` (class
constants),
`source_label()`, `source_secrets()`, `source_redacted(out)`, and the static `aliases(env)`,
`late_problems(values)`, `pipeline_only(problems)`. They are called on the part's class (`part.hook(...)`),
never through `Settings`, whose MRO would pick one part's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connector.shared_settings import (
    DEFAULT_ABLY_REST_URL,
    DEFAULT_FALLBACK_HOSTS,
    CommonSettings,
    default_instance_id,
)
from connector.sources.mongodb.settings import MongoSettings
from connector.sources.postgres.settings import PostgresSettings

if TYPE_CHECKING:
    from connector.check_report import Out
    from connector.deadletter.store import DeadLetterStore
    from connector.sources.protocol import Source

SettingsPart = type[MongoSettings] | type[PostgresSettings]
#: SOURCE → its settings part.
SETTINGS_PARTS: dict[str, SettingsPart] = {"mongodb": MongoSettings, "postgres": PostgresSettings}


class Settings(CommonSettings, MongoSettings, PostgresSettings, BaseSettings):
    """Every setting of the connector; names match the environment variables in lower case."""

    # extra="forbid": a misspelt keyword in code (tests) fails loudly; the environment is filtered first.
    model_config = SettingsConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only explicit values: `load_settings` does env, `.env` and `_FILE` with clear errors."""
        return (init_settings,)

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        if "ably_fallback_hosts" not in self.model_fields_set and self.ably_rest_url == DEFAULT_ABLY_REST_URL:
            self.ably_fallback_hosts = list(DEFAULT_FALLBACK_HOSTS)
        if not self.connector_id:
            self.connector_id = self.watch_label
        if not self.instance_id:
            self.instance_id = default_instance_id()
        return self

    @property
    def part(self) -> SettingsPart:
        return SETTINGS_PARTS[self.source]

    @property
    def watch_label(self) -> str:
        """What this source reads (`<db>`, `<db>.<coll>`, the outbox table): for logs and the default
        connector id."""
        return self.part.source_label(self)

    def secrets(self) -> list[str]:
        """Values that must never appear in logs: register each with `connector.logs.register_secret`."""
        out = [self.ably_api_key.get_secret_value()]
        out.append(out[0].partition(":")[2])
        out.extend(self.cipher_secrets())
        for part in SETTINGS_PARTS.values():
            out.extend(part.source_secrets(self))
        return [s for s in dict.fromkeys(out) if s]

    def redacted(self) -> dict[str, Any]:
        """All settings with secrets masked, for the startup log line."""
        masks = {name: mask for part in SETTINGS_PARTS.values() for name, mask in part.MASKS.items()}
        out = self.model_dump(exclude={"ably_api_key", *masks})
        for name, mask in masks.items():
            out[name] = mask(getattr(self, name))
        out["ably_api_key"] = self.ably_api_key.get_secret_value().partition(":")[0] + ":***"
        out.update(self.cipher_redacted())
        for part in SETTINGS_PARTS.values():
            part.source_redacted(self, out)
        return out

    def __repr_args__(self) -> Any:
        yield from self.redacted().items()


Command = Callable[[Settings, "Out"], Coroutine[Any, Any, int]]


@dataclass(frozen=True, slots=True)
class SourceEntry:
    name: str
    build: Callable[[Settings], Source]
    #: Command name (as typed: `check`, `create-tables`, `token show`) → its coroutine; exit status.
    commands: Mapping[str, Command] = field(default_factory=dict)
    #: Why a command of another source does not apply here, when that deserves more than its name.
    refusals: Mapping[str, str] = field(default_factory=dict)
    #: The source's dead-letter store, for `deadletter list | show | replay | purge`.
    deadletters: Callable[[Settings], DeadLetterStore] | None = None


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


def _mongodb_deadletters(settings: Settings) -> DeadLetterStore:
    from connector.sources.mongodb.deadletter_store import MongoDeadLetterStore

    return MongoDeadLetterStore(settings)


def _postgres_deadletters(settings: Settings) -> DeadLetterStore:
    from connector.sources.postgres.deadletter_store import PostgresDeadLetterStore

    return PostgresDeadLetterStore(settings)


SOURCES: dict[str, SourceEntry] = {
    "mongodb": SourceEntry(
        "mongodb",
        _build_mongodb,
        {"check": _mongodb_check, "token show": _token_show, "token reset": _token_reset},
        deadletters=_mongodb_deadletters,
    ),
    "postgres": SourceEntry(
        "postgres",
        _build_postgres,
        {"check": _postgres_check, "create-tables": _create_tables},
        refusals={"token": "token commands apply to SOURCE=mongodb (the outbox itself is the position)"},
        deadletters=_postgres_deadletters,
    ),
}


def entry(source: str) -> SourceEntry:
    return SOURCES[source]


def build_source(settings: Settings) -> Source:
    return SOURCES[settings.source].build(settings)
