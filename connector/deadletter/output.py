"""How dead letters are printed: a table for people, JSON for scripts, and one record whole (`show`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from connector.deadletter.model import DeadLetter

__all__ = ["record_json", "records_json", "table"]

Out = Callable[[str], None]

#: The reason column is cut to this many characters (`show` prints it whole).
REASON_WIDTH = 70
_COLUMNS = ("ID", "AT (UTC)", "KIND", "CODE", "CHANNEL", "REPLAYED", "REASON")


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else ""


def _replayed(record: DeadLetter) -> str:
    if record.replay_outcome is None:
        return "-"
    form = f" ({record.replay_form})" if record.replay_outcome == "published" and record.replay_form else ""
    return f"{record.replay_outcome}{form} {_when(record.replayed_at)}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def table(records: Sequence[DeadLetter], out: Out) -> None:
    """Aligned columns, oldest first; ids are printed whole since `show` and `replay --id` take them."""
    rows = [
        (
            r.id,
            _when(r.at),
            r.kind,
            str(r.code),
            r.channel if r.channel is not None else "-",
            _replayed(r),
            _cut(" ".join(r.reason.split()), REASON_WIDTH),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    for row in [_COLUMNS, *rows]:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def records_json(records: Sequence[DeadLetter], out: Out) -> None:
    """One JSON array of the records' summaries (`list --json`)."""
    out(orjson.dumps([r.summary() for r in records], option=orjson.OPT_INDENT_2).decode())


def record_json(record: DeadLetter, out: Out) -> None:
    """The summary and the record as stored (the event or row, the reason), pretty-printed."""
    doc: dict[str, Any] = {**record.summary(), "stored": record.stored}
    out(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode())
