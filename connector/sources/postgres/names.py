"""Names of the tables and functions the outbox source uses, derived from OUTBOX_TABLE and NODES_TABLE.

Ably's tables keep their names (`public.outbox`, `public.nodes` by default). The connector's own objects
live next to the outbox and are named after it, so two outboxes in one database never share them:

| object | default name | holds |
| --- | --- | --- |
| watermark table | `public.outbox_watermark` | the `sync()` watermark and the leadership epoch (one row) |
| dead-letter table | `public.outbox_deadletter` | rows that can never be published (ON_UNPUBLISHABLE) |
| overflow table | `public.outbox_overflow` | a throttled channel's spilled rows (CHANNEL_MAX_BACKLOG) |
| watermark function | `public.outbox_sync_sequence_id()` | the safe `sequenceId` for the Models SDK |
| notify function | `public.outbox_notify()` | Ably's trigger function: `pg_notify('ably_adbc', '')` |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # psycopg is imported where SQL is built: settings parsing must not load it
    from psycopg import sql

__all__ = ["NOTIFY_CHANNEL", "OutboxNames", "TableName", "parse_table_name"]

#: The channel Ably's trigger notifies and its connector LISTENs on.
NOTIFY_CHANNEL = "ably_adbc"
#: PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63
DEFAULT_SCHEMA = "public"


@dataclass(frozen=True, slots=True)
class TableName:
    """A schema-qualified name; `sql` quotes both parts, `text` is `schema.name` for logs."""

    schema: str
    name: str

    @property
    def text(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def sql(self) -> sql.Identifier:
        from psycopg import sql  # here, not at the top: see the TYPE_CHECKING import

        return sql.Identifier(self.schema, self.name)

    def sibling(self, suffix: str) -> TableName:
        """`<schema>.<name><suffix>`, e.g. the outbox's `_watermark` table."""
        return TableName(self.schema, self.name + suffix)


def _check_part(part: str, text: str) -> None:
    if not part:
        raise ValueError(f"must be <schema>.<table> or <table> (got {text!r})")
    if '"' in part or "\x00" in part or part != part.strip():
        raise ValueError(f"must not contain quotes or surrounding spaces (got {text!r})")
    if len(part.encode()) > MAX_IDENTIFIER_BYTES - len("_deadletter"):
        # The connector's own tables append up to 11 bytes; keep those within PostgreSQL's limit too.
        raise ValueError(f"each part must be at most {MAX_IDENTIFIER_BYTES - 11} bytes long (got {text!r})")


def parse_table_name(text: str) -> TableName:
    """`schema.table` or `table` (schema `public`); names are used as written (case-sensitive, quoted)."""
    schema, dot, name = text.partition(".")
    if not dot:
        schema, name = DEFAULT_SCHEMA, schema
    _check_part(schema, text)
    _check_part(name, text)
    if "." in name:
        raise ValueError(f"must be <schema>.<table> or <table> (got {text!r})")
    return TableName(schema, name)


@dataclass(frozen=True, slots=True)
class OutboxNames:
    """Every object name the source touches, from the two settings."""

    outbox: TableName
    nodes: TableName

    @classmethod
    def from_settings(cls, outbox_table: str, nodes_table: str) -> OutboxNames:
        return cls(parse_table_name(outbox_table), parse_table_name(nodes_table))

    @property
    def watermark(self) -> TableName:
        return self.outbox.sibling("_watermark")

    @property
    def deadletter(self) -> TableName:
        return self.outbox.sibling("_deadletter")

    @property
    def overflow(self) -> TableName:
        return self.outbox.sibling("_overflow")

    @property
    def sync_function(self) -> TableName:
        return self.outbox.sibling("_sync_sequence_id")

    @property
    def notify_function(self) -> TableName:
        return self.outbox.sibling("_notify")
