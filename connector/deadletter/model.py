"""A dead letter as both sources show it, and what a command selects.

A record's `id` is its message id: the resume token's `_data` (MongoDB) or the `sequence_id` (Postgres),
the id a replay publishes it with. Times are aware UTC datetimes.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

__all__ = [
    "GLOB_CHARACTERS",
    "DeadLetter",
    "ReplayForm",
    "ReplayOutcome",
    "Selection",
    "parse_when",
]

ReplayForm = Literal["compact", "original"]
ReplayOutcome = Literal["published", "failed"]

#: A --channel value with one of these is a glob (fnmatch, case-sensitive like Ably's channel names).
GLOB_CHARACTERS = frozenset("*?[")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


@dataclass(slots=True)
class DeadLetter:
    """One dead letter; `stored` is the record as the database holds it, JSON-able (for `show`)."""

    id: str
    channel: str | None
    name: str | None
    kind: str
    reason: str
    code: int
    at: datetime
    replayed_at: datetime | None = None
    replay_outcome: ReplayOutcome | None = None
    replay_form: ReplayForm | None = None
    replays: int = 0
    #: False when the record keeps only the event's identity (stored without its bodies): only the
    #: compact form can be sent.
    whole: bool = True
    stored: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def replayed(self) -> bool:
        """Replayed and accepted by Ably: a replay without --again leaves it alone."""
        return self.replay_outcome == "published"

    def summary(self) -> dict[str, Any]:
        """The fields `list --json` prints."""
        return {
            "id": self.id,
            "at": _iso(self.at),
            "kind": self.kind,
            "code": self.code,
            "channel": self.channel,
            "name": self.name,
            "reason": self.reason,
            "replayedAt": _iso(self.replayed_at),
            "replayOutcome": self.replay_outcome,
            "replayForm": self.replay_form,
            "replays": self.replays,
            "whole": self.whole,
        }


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if when else None


@dataclass(frozen=True, slots=True)
class Selection:
    """The records a command applies to: every filter given must match.

    `replayed`: True only records replayed (accepted by Ably), False only those not (yet), None both.
    `channel` is exact unless it has a glob character; `reason` matches a substring, ignoring case.
    """

    ids: tuple[str, ...] = ()
    kind: str | None = None
    reason: str | None = None
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    replayed: bool | None = None
    limit: int | None = None
    #: Only records after this id in stream order (the stores apply it): a replay reads page by page.
    after: str | None = None

    @property
    def channel_glob(self) -> str | None:
        """The channel pattern when it is a glob (matched by the core, not the database)."""
        if self.channel is not None and GLOB_CHARACTERS & set(self.channel):
            return self.channel
        return None

    @property
    def channel_exact(self) -> str | None:
        return None if self.channel_glob is not None else self.channel

    @property
    def narrowed(self) -> bool:
        """Whether anything but the limit narrows the selection (replay and purge want it said)."""
        return bool(self.ids) or any(
            value is not None for value in (self.kind, self.reason, self.channel, self.since, self.until)
        )

    def matches(self, record: DeadLetter) -> bool:
        """Every filter, checked on a record (the stores filter in the database first; this is exact)."""
        if self.ids and record.id not in self.ids:
            return False
        if self.kind is not None and record.kind != self.kind:
            return False
        if self.reason is not None and self.reason.lower() not in record.reason.lower():
            return False
        if self.channel is not None:
            if record.channel is None:
                return False
            glob = self.channel_glob
            if glob is not None and not fnmatch.fnmatchcase(record.channel, glob):
                return False
            if glob is None and record.channel != self.channel:
                return False
        if self.since is not None and record.at < self.since:
            return False
        if self.until is not None and record.at >= self.until:
            return False
        return self.replayed is None or record.replayed == self.replayed


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a time ago: `90s`, `15m`, `2h`, `7d`, `1w`."""
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        ago = timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
        return (now or datetime.now(UTC)) - ago
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-12-07T09:30Z) nor a time ago (90s, 15m, 2h, 7d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
