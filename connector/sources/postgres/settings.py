"""The Postgres outbox source's settings: the connection, Ably's tables and the polling pace.

A part of the one `Settings` (connector/sources/registry.py composes it). SOURCE=postgres requires
`POSTGRES_URI` and ignores the MongoDB settings. Ably's Postgres connector variables (`ADBC_*`) are read as
aliases of ours (`adbc.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import unquote

from pydantic import Field, field_validator, model_validator

from connector.shared_settings import SourceSelection, mask_uri, uri_password
from connector.sources.postgres.adbc import KNOWN as ADBC_VARIABLES
from connector.sources.postgres.adbc import apply_adbc_aliases
from connector.sources.postgres.names import parse_table_name

_CONNINFO_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
#: Longest wait for a missing sequence_id before it is logged and skipped. A gap is normally resolved
#: within one poll round by proof (see gaps.py); the timeout only bites when a transaction that drew a
#: number stays open this long. Chosen from the measurements in the README.
GAP_TIMEOUT_MS_DEFAULT = 5000


def mask_conninfo(conninfo: str) -> str:
    """A libpq URI or `key=value` string with its password masked."""
    if "://" in conninfo:
        return mask_uri(conninfo)
    return _CONNINFO_PASSWORD_RE.sub(r"\1***", conninfo)


def conninfo_password(conninfo: str) -> str | None:
    if "://" in conninfo:
        return uri_password(conninfo)
    match = _CONNINFO_PASSWORD_RE.search(conninfo)
    if match is None:
        return None
    value = match.group(2)
    if value.startswith("'"):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value or None


class PostgresSettings(SourceSelection):
    """SOURCE=postgres: Ably's outbox and nodes tables."""

    SOURCE: ClassVar[str] = "postgres"
    EMPTY_IS_A_VALUE: ClassVar[frozenset[str]] = frozenset()
    OWN_FILE_FIELDS: ClassVar[frozenset[str]] = frozenset()
    MASKS: ClassVar[Mapping[str, Callable[[str], str]]] = {"postgres_uri": mask_conninfo}
    #: Other names this source reads: Ably's Postgres connector's variables.
    ALIASES: ClassVar[frozenset[str]] = ADBC_VARIABLES

    postgres_uri: str = Field(default="", repr=False, validate_default=True)
    outbox_table: str = "public.outbox"
    nodes_table: str = "public.nodes"
    poll_interval_ms: int = Field(default=1000, gt=0)
    gap_timeout_ms: int = Field(default=GAP_TIMEOUT_MS_DEFAULT, gt=0)
    outbox_batch_size: int = Field(default=1000, gt=0)
    #: Create Ably's tables at start-up when missing (as `create-tables` does), like Ably's connector.
    outbox_table_auto_create: bool = False
    nodes_table_auto_create: bool = False
    #: Poll every POLL_INTERVAL_MS only, without LISTEN (Ably's ADBC_POLL_FIXED_RATE).
    poll_fixed_rate: bool = False

    @field_validator("postgres_uri")
    @classmethod
    def _check_postgres_uri(cls, value: str, info: Any) -> str:
        if not value:
            if info.data.get("source") == "postgres":
                raise ValueError("required")
            return value
        if "://" in value and not value.startswith(("postgres://", "postgresql://")):
            # Never echo the value: it may hold a password.
            raise ValueError("must be a postgresql:// URI or a libpq key=value connection string")
        return value

    @field_validator("outbox_table", "nodes_table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        return parse_table_name(value).text

    @model_validator(mode="after")
    def _check_postgres(self) -> PostgresSettings:
        if self.source == "postgres" and self.outbox_table == self.nodes_table:
            raise ValueError("NODES_TABLE: must differ from OUTBOX_TABLE")
        return self

    # ---- the registry's hooks (called on this class, whatever the composed class's MRO) ----

    def source_label(self) -> str:
        """The outbox table: for logs and the default connector id."""
        return self.outbox_table

    def source_secrets(self) -> list[str]:
        password = conninfo_password(self.postgres_uri)
        return [password, unquote(password)] if password else []

    def source_redacted(self, out: dict[str, Any]) -> None:
        """Nothing beyond the masked connection string."""

    @staticmethod
    def late_problems(values: Mapping[str, Any]) -> list[str]:
        return []

    @staticmethod
    def pipeline_only(problems: list[str]) -> bool:
        return False

    @staticmethod
    def aliases(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """Ably's `ADBC_*` variables translated to ours (any `ADBC_POSTGRES_*` selects this source)."""
        return apply_adbc_aliases(env)
