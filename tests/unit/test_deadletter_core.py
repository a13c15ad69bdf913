"""The dead-letter core without a database: time parsing, selection, and what a replay builds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from connector.ably.oversize import OnOversize
from connector.config import load_settings
from connector.deadletter.model import DeadLetter, Selection, parse_when
from connector.deadletter.replay import REPLAYED_HEADER, plan
from connector.sources.postgres.messages import OutboxRow, row_to_message

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("1w", NOW - timedelta(days=7)),
        ("2026-12-01T09:30Z", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        ("2026-12-01T09:30", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),  # naive: UTC
        ("2026-12-01T10:30+01:00", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-5m", "12", ""])
def test_parse_when_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_when(text, now=NOW)


def record(**fields: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "id": "7",
        "channel": "orders:7",
        "name": "update",
        "kind": "too_large",
        "reason": "message is 3000 bytes, over MAX_MESSAGE_SIZE",
        "code": 72001,
        "at": NOW,
    }
    return DeadLetter(**{**base, **fields})


def test_selection_matches_every_filter_given() -> None:
    r = record()
    assert Selection().matches(r)
    assert Selection(channel="orders:*").matches(r) and Selection(channel="orders:7").matches(r)
    assert not Selection(channel="orders:").matches(r) and not Selection(channel="Orders:*").matches(r)
    assert not Selection(channel="*").matches(record(channel=None))
    assert Selection(reason="MAX_message").matches(r) and not Selection(reason="capability").matches(r)
    assert Selection(since=NOW, until=NOW + timedelta(seconds=1)).matches(r)
    assert not Selection(until=NOW).matches(r)  # until is exclusive, since inclusive
    assert Selection(ids=("7",), kind="too_large").matches(r) and not Selection(kind="rejected").matches(r)
    assert Selection(replayed=False).matches(r) and not Selection(replayed=True).matches(r)
    assert Selection(replayed=True).matches(record(replay_outcome="published"))
    assert Selection(replayed=False).matches(record(replay_outcome="failed"))


def test_a_glob_is_matched_by_the_core_an_exact_channel_by_the_database() -> None:
    assert Selection(channel="orders:[0-9]").channel_glob == "orders:[0-9]"
    assert Selection(channel="orders:1").channel_exact == "orders:1"
    assert not Selection(limit=5).narrowed and Selection(kind="x").narrowed


class RowStore:
    """Just `route`, over Postgres rows: enough for `plan`."""

    where = "test"

    def __init__(self, rows: dict[str, OutboxRow]) -> None:
        self.rows = rows

    def route(
        self, record: DeadLetter, seq: int, *, compact: bool, max_message_size: int, on_oversize: OnOversize
    ) -> Any:
        row = self.rows[record.id]
        if compact:
            row = OutboxRow(
                row.sequence_id, row.mutation_id, row.channel, row.name, row.rejected, None, row.headers
            )
        return row_to_message(seq, row, max_message_size=max_message_size, token={}, on_oversize=on_oversize)


def settings(**env: str) -> Any:
    base = {"SOURCE": "postgres", "POSTGRES_URI": "postgresql://x@h/db", "ABLY_API_KEY": "a.b:c"}
    return load_settings({**base, **env}, env_file=None)


def test_plan_builds_the_compact_form_with_the_replay_headers_and_the_true_size() -> None:
    store = RowStore(
        {"7": OutboxRow(7, "m7", "orders:7", "update", False, '{"v": "' + "x" * 500 + '"}', None)}
    )
    [planned] = plan(store, [record()], settings(MAX_MESSAGE_SIZE="300"), as_original=False)
    assert planned.error is None and planned.message is not None and planned.form == "compact"
    message = planned.message
    headers = message.message["extras"]["headers"]
    assert message.message["id"] == "7" and "data" not in message.message
    assert headers[REPLAYED_HEADER] == "true" and headers["x-livesync-truncated"] == "true"
    assert int(headers["x-livesync-original-size"]) > 500
    assert message.size == len(b"update") + len(orjson.dumps(message.message["extras"]))  # as Ably counts
    assert message.seq == -1 and message.spec is None


def test_plan_as_original_follows_the_size_rules() -> None:
    store = RowStore(
        {"7": OutboxRow(7, "m7", "orders:7", "update", False, '{"v": "' + "x" * 500 + '"}', None)}
    )
    records = [record()]
    [over] = plan(
        store, records, settings(MAX_MESSAGE_SIZE="300", ON_OVERSIZE="deadletter"), as_original=True
    )
    assert over.message is None and over.error is not None and over.error.kind == "too_large"
    [truncated] = plan(store, records, settings(MAX_MESSAGE_SIZE="300"), as_original=True)
    assert truncated.form == "compact"  # ON_OVERSIZE=truncate made it compact: marked as such
    [whole] = plan(store, records, settings(MAX_MESSAGE_SIZE="65536"), as_original=True)
    assert whole.form == "original" and whole.message is not None
    assert "x-livesync-truncated" not in whole.message.message["extras"]["headers"]
    assert whole.message.message["extras"]["headers"][REPLAYED_HEADER] == "true"


def test_a_record_stored_without_its_bodies_goes_compact_even_as_original() -> None:
    store = RowStore({"7": OutboxRow(7, "m7", "orders:7", "update", False, '{"v": 1}', None)})
    [planned] = plan(store, [record(whole=False)], settings(), as_original=True)
    assert planned.form == "compact" and planned.message is not None
    assert planned.message.message["extras"]["headers"]["x-livesync-truncated"] == "true"


@pytest.mark.parametrize(
    ("glob", "like"),
    [
        ("orders:*", "orders:%"),
        ("tenant_?:a%b", "tenant\\__:a\\%b"),  # `_` and `%` literal, `?` any one character
        ("back\\slash*", "back\\\\slash%"),
        ("[ab]*", None),
        (None, None),
    ],
)
def test_a_postgres_channel_glob_becomes_a_like_pattern_the_database_can_limit(
    glob: str | None, like: str | None
) -> None:
    from connector.sources.postgres.deadletter_store import _like_pattern

    assert _like_pattern(glob) == like
