"""What happens to an outbox row that can never be published (ON_UNPUBLISHABLE).

`deadletter` (default) copies the row with the reason, code and kind into `<outbox>_deadletter` (next to
the outbox; the row is then deleted from the outbox like a published one; `livesync-connector deadletter`
lists and replays them, `deadletter_store.py`); `skip` logs and counts it; `fail`
stops the connector with the row left in the outbox, so a restart meets it again. A dead-letter write
that fails raises DatabaseUnavailable: the row is not done, and is read again after the reconnect.
"""

from __future__ import annotations

import logging
from typing import Literal

from psycopg import sql

from connector.errors import FatalError
from connector.sources.postgres.db import Connection, mapped_errors
from connector.sources.postgres.messages import OutboxRow
from connector.sources.postgres.names import OutboxNames

log = logging.getLogger(__name__)

Policy = Literal["deadletter", "skip", "fail"]


class UnpublishableRows:
    """Applies ON_UNPUBLISHABLE to one row."""

    def __init__(self, policy: Policy, conn: Connection, names: OutboxNames) -> None:
        self.policy = policy
        self._conn = conn
        self._insert = sql.SQL(
            "INSERT INTO {} (sequence_id, mutation_id, channel, name, rejected, data, headers, reason, code, "
            "kind) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s) "
            "ON CONFLICT (sequence_id) DO NOTHING"
        ).format(names.deadletter.sql)
        self.deadlettered = 0
        self.skipped = 0
        #: Dead-lettered (or skipped) rows by `UnpublishableEvent.kind`.
        self.by_kind: dict[str, int] = {}

    async def handle(
        self, row: OutboxRow, reason: str, code: int, *, kind: str = "invalid", fatal: bool = False
    ) -> None:
        """Dead-letter, skip, or raise FatalError; returns once the row may count as done."""
        if self.policy == "fail" or fatal:
            raise FatalError(
                f"unpublishable outbox row {row.sequence_id} (channel {row.channel!r}): {reason}", code=code
            )
        if self.policy == "skip":
            self.skipped += 1
            log.warning(
                "skipped unpublishable outbox row %d: %s",
                row.sequence_id,
                reason,
                extra={"code": code, "channel": row.channel},
            )
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            return
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        with mapped_errors("writing a dead letter"):
            await self._conn.execute(
                self._insert,
                [
                    row.sequence_id,
                    row.mutation_id,
                    row.channel,
                    row.name,
                    row.rejected,
                    row.data,
                    row.headers,
                    reason,
                    code,
                    kind,
                ],
            )
        self.deadlettered += 1
        log.warning(
            "dead-lettered unpublishable outbox row %d: %s",
            row.sequence_id,
            reason,
            extra={"code": code, "channel": row.channel},
        )
