"""The outbox source's dead letters for `livesync-connector deadletter`: the `<outbox>_deadletter` rows.

A record is the outbox row as it was (`sequence_id`, `mutation_id`, `channel`, `name`, `rejected`,
`data`, `headers`) with `reason`, `code`, `kind` and `at` (`deadletter.py`); a replay sets
`replayed_at`, `replay_outcome` (`published` / `failed`), `replay_form` and `replays`, and on a failure the
new `reason`, `code` and `kind`. Messages are built by the source's own `row_to_message`, with the
`sequence_id` as the id, exactly as the running connector builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import sql

from connector.ably.cipher import cipher_from
from connector.ably.outbound import OutboundMessage
from connector.ably.oversize import OnOversize
from connector.config import Settings
from connector.deadletter.model import DeadLetter, ReplayForm, Selection
from connector.errors import SchemaError
from connector.sources.postgres.db import Connection, close_quietly, connect, mapped_errors
from connector.sources.postgres.messages import OutboxRow, row_to_message
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.schema import add_deadletter_columns, exists

__all__ = ["PostgresDeadLetterStore"]

_COLUMNS = sql.SQL(
    "sequence_id, mutation_id, channel, name, rejected, data::text, headers::text, reason, code, at, kind, "
    "replayed_at, replay_outcome, replay_form, replays"
)


class PostgresDeadLetterStore:
    """`connector.deadletter.store.DeadLetterStore` over `<outbox>_deadletter`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._names = OutboxNames.from_settings(settings.outbox_table, settings.nodes_table)
        self._table = self._names.deadletter
        self.where = self._table.text
        self._cipher = cipher_from(settings)  # a replay is encrypted as the connector's messages are
        self._conn: Connection | None = None
        self._rows: dict[str, OutboxRow] = {}

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("open() the store first")
        return self._conn

    async def open(self) -> None:
        """Connect; the table must exist (the connector creates it at start-up, as `create-tables` does),
        and gets the replay columns if it was created before them."""
        self._conn = await connect(self._settings.postgres_uri, purpose="deadletter")
        with mapped_errors(f"reading {self.where}"):
            if not await exists(self.conn, self._table):
                raise SchemaError(
                    f"dead-letter table {self.where} does not exist: run `livesync-connector create-tables` "
                    "or start the connector once"
                )
            await add_deadletter_columns(self.conn, self._names)

    def _where(self, selection: Selection) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        if selection.ids:
            numbers = [int(i) for i in selection.ids if i.isdigit()]
            clauses.append(sql.SQL("sequence_id = ANY(%s)"))
            params.append(numbers)
        if selection.after is not None:
            clauses.append(sql.SQL("sequence_id > %s"))
            params.append(int(selection.after))
        if selection.kind is not None:
            clauses.append(sql.SQL("kind = %s"))
            params.append(selection.kind)
        if selection.reason is not None:
            clauses.append(sql.SQL("strpos(lower(reason), lower(%s)) > 0"))
            params.append(selection.reason)
        if selection.channel_exact is not None:
            clauses.append(sql.SQL("channel = %s"))
            params.append(selection.channel_exact)
        like = _like_pattern(selection.channel_glob)
        if like is not None:
            clauses.append(sql.SQL("channel LIKE %s ESCAPE '\\'"))
            params.append(like)
        if selection.since is not None:
            clauses.append(sql.SQL("at >= %s"))
            params.append(selection.since)
        if selection.until is not None:
            clauses.append(sql.SQL("at < %s"))
            params.append(selection.until)
        if selection.replayed is True:
            clauses.append(sql.SQL("replay_outcome = 'published'"))
        elif selection.replayed is False:
            clauses.append(sql.SQL("replay_outcome IS DISTINCT FROM 'published'"))
        if not clauses:
            return sql.SQL(""), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params

    async def find(self, selection: Selection) -> list[DeadLetter]:
        where, params = self._where(selection)
        query = sql.SQL("SELECT {} FROM {}").format(_COLUMNS, self._table.sql) + where
        query += sql.SQL(" ORDER BY sequence_id")
        # A glob with `[...]` is matched here only, so then the database cannot apply the limit.
        glob = selection.channel_glob
        if selection.limit and (glob is None or _like_pattern(glob) is not None):
            query += sql.SQL(" LIMIT {}").format(sql.Literal(selection.limit))
        out: list[DeadLetter] = []
        self._rows = {}  # the rows of this find only: a replay reads page by page
        with mapped_errors(f"reading {self.where}"):
            cur = await self.conn.execute(query, params)
            for row in await cur.fetchall():
                record = self._record(row)
                if selection.matches(record):
                    out.append(record)
                    if selection.limit and len(out) >= selection.limit:
                        break
        return out

    async def get(self, record_id: str) -> DeadLetter | None:
        found = await self.find(Selection(ids=(record_id,)))
        return found[0] if found else None

    def _record(self, row: tuple[Any, ...]) -> DeadLetter:
        (seq, mutation_id, channel, name, rejected, data, headers, reason, code, at, kind) = row[:11]
        replayed_at, outcome, form, replays = row[11:]
        record_id = str(seq)
        self._rows[record_id] = OutboxRow(int(seq), mutation_id, channel, name, bool(rejected), data, headers)
        stored = {
            "sequence_id": seq,
            "mutation_id": mutation_id,
            "channel": channel,
            "name": name,
            "rejected": rejected,
            "data": orjson.loads(data) if data is not None else None,
            "headers": orjson.loads(headers) if headers is not None else None,
            "reason": reason,
            "code": code,
            "kind": kind,
            "at": at.isoformat() if at else None,
        }
        return DeadLetter(
            id=record_id,
            channel=channel,
            name=name,
            kind=kind or "invalid",
            reason=reason,
            code=int(code),
            at=at.astimezone(UTC),
            replayed_at=replayed_at.astimezone(UTC) if replayed_at else None,
            replay_outcome=outcome if outcome in ("published", "failed") else None,
            replay_form=form if form in ("compact", "original") else None,
            replays=int(replays or 0),
            stored=stored,
        )

    def route(
        self, record: DeadLetter, seq: int, *, compact: bool, max_message_size: int, on_oversize: OnOversize
    ) -> OutboundMessage:
        row = self._rows[record.id]
        if compact:
            row = OutboxRow(
                row.sequence_id, row.mutation_id, row.channel, row.name, row.rejected, None, row.headers
            )
        return row_to_message(
            seq,
            row,
            max_message_size=max_message_size,
            token={},
            on_oversize=on_oversize,
            cipher=self._cipher,
        )

    async def mark_published(self, record: DeadLetter, at: datetime, form: ReplayForm) -> None:
        await self._update(
            record,
            sql.SQL(
                "replayed_at = %s, replay_outcome = 'published', replay_form = %s, replays = replays + 1"
            ),
            [at, form],
        )

    async def mark_failed(self, record: DeadLetter, at: datetime, reason: str, code: int, kind: str) -> None:
        await self._update(
            record,
            sql.SQL(
                "reason = %s, code = %s, kind = %s, replayed_at = %s, replay_outcome = 'failed', "
                "replay_form = NULL, replays = replays + 1"
            ),
            [reason, code, kind, at],
        )

    async def _update(self, record: DeadLetter, assignments: sql.Composable, params: list[Any]) -> None:
        query = sql.SQL("UPDATE {} SET ").format(self._table.sql) + assignments
        query += sql.SQL(" WHERE sequence_id = %s")
        with mapped_errors(f"marking {record.id} in {self.where}"):
            await self.conn.execute(query, [*params, int(record.id)])

    async def delete(self, records: Sequence[DeadLetter]) -> int:
        query = sql.SQL("DELETE FROM {} WHERE sequence_id = ANY(%s)").format(self._table.sql)
        with mapped_errors(f"deleting from {self.where}"):
            cur = await self.conn.execute(query, [[int(r.id) for r in records]])
        return int(cur.rowcount)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn)


def _like_pattern(glob: str | None) -> str | None:
    """A channel glob of `*` and `?` as a LIKE pattern (`%`, `_`; LIKE's own characters escaped), so the
    database filters and limits; None for no glob or one with `[...]` (matched by the core)."""
    if glob is None or "[" in glob:
        return None
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")
