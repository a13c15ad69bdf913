"""Fragments of a split change event -> the one event they came from.

An event over 16 MiB (an update of a 9 MiB document with both images, say) cannot leave the server whole:
with `$changeStreamSplitLargeEvent` last in the pipeline (the connector appends it where the server has
it: 7.0, and 6.0.9 on) it arrives as fragments `splitEvent: {fragment: n, of: m}`, one after the other,
each with its own resume token and a share of the event's top-level fields (mongod packs them by size,
not in the event's order, so the merged event's keys may come in another order; `_id` stays first).
The reader routes an event only once all of its fragments are in, and never lets its position (hence a
stored token) fall between two fragments: after a crash or a reopen the stream starts again before the
first fragment, and the reassembled event is the same, with the same message id (the last fragment's
token, which is also the position after the event).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from connector.errors import StreamError

log = logging.getLogger(__name__)

__all__ = ["SPLIT_FIELD", "Reassembler"]

SPLIT_FIELD = "splitEvent"


class Reassembler:
    """Collects one split event's fragments; `before` is where to reopen while one is incomplete."""

    def __init__(self) -> None:
        self._parts: list[Mapping[str, Any]] = []
        self.before: Any = None
        self.reassembled = 0

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def reset(self) -> None:
        """Forget a partial event (the stream reopens before its first fragment)."""
        self._parts = []
        self.before = None

    def add(self, fragment: Mapping[str, Any], before: Any) -> dict[str, Any] | None:
        """Take one fragment; the whole event once its last fragment is in, else None.

        `before` is the stream position just before this fragment (kept from the first one)."""
        split = fragment[SPLIT_FIELD]
        number, total = int(split["fragment"]), int(split["of"])
        if number == 1:
            if self._parts:
                log.warning("split event restarted at fragment 1 before it was complete; starting over")
            self._parts = [fragment]
            self.before = before
        elif not self._parts or number != len(self._parts) + 1 or total != self._total():
            got = len(self._parts)
            self.reset()
            raise StreamError(
                f"split event fragment {number} of {total} arrived after {got} fragment(s): "
                "reopening before the event's first fragment"
            )
        else:
            self._parts.append(fragment)
        if number < total:
            return None
        event = self._merge()
        self.reset()
        self.reassembled += 1
        return event

    def _total(self) -> int:
        return int(self._parts[0][SPLIT_FIELD]["of"])

    def _merge(self) -> dict[str, Any]:
        """The event's fields in fragment order, with the last fragment's token as its `_id`."""
        event: dict[str, Any] = {"_id": self._parts[-1]["_id"]}
        for part in self._parts:
            for key, value in part.items():
                if key != "_id" and key != SPLIT_FIELD:
                    event[key] = value
        return event
