"""`showSystemEvents` as mongod applies it: a database or deployment stream hides every `system.`
collection's events unless the option is set, and then shows those of `system.js`, `system.views`,
`system.resharding.*` and `system.buckets.*` (kRegexAllCollectionsShowSystemEvents)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from emulators.mongodb.changestream import exposed_system_collection

pytestmark = pytest.mark.integration


def _namespaces(db: Any, spec: dict[str, Any]) -> list[str]:
    """The collections of the events a database stream opened with `spec` sees for the writes below."""
    cursor = db.aggregate([{"$changeStream": spec}])
    try:
        db["system.js"].insert_one({"_id": "f", "value": 1})
        db.plain.insert_one({"_id": "last"})
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while "plain" not in seen and time.monotonic() < deadline:
            event = cursor.try_next()
            if event is not None:
                seen.append(event["ns"]["coll"])
        return seen
    finally:
        cursor.close()


def test_system_js_is_hidden_by_default(sync_db: Any) -> None:
    assert _namespaces(sync_db, {}) == ["plain"]


def test_show_system_events_shows_system_js(sync_db: Any) -> None:
    assert _namespaces(sync_db, {"showSystemEvents": True}) == ["system.js", "plain"]


def test_which_system_collections_the_option_exposes() -> None:
    exposed = ["system.js", "system.views", "system.resharding.abc", "system.buckets.metrics"]
    hidden = ["system.profile", "system.jsx", "system.viewsx", "system.users", "system.bucketsx"]
    assert [exposed_system_collection(name) for name in exposed] == [True] * len(exposed)
    assert [exposed_system_collection(name) for name in hidden] == [False] * len(hidden)
