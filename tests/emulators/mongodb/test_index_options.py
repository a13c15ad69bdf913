"""Changing an index's options as mongod 7.0 does (emulators/mongodb/index_options.py): createIndexes never
changes an existing index, collMod changes a TTL in place, dropIndexes removes it. Runs against a real
replica set too (MONGODB_TEST_URI)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

DAY = 86_400


def codes(exc: pytest.ExceptionInfo[OperationFailure]) -> int | None:
    return exc.value.code


def test_create_indexes_with_the_same_name_and_other_options_conflicts(sync_db: Any) -> None:
    sync_db.c.create_index("at", expireAfterSeconds=14 * DAY, name="at_ttl")
    sync_db.c.create_index("at", expireAfterSeconds=14 * DAY, name="at_ttl")  # the same index: no-op
    with pytest.raises(OperationFailure) as same_name:
        sync_db.c.create_index("at", expireAfterSeconds=3 * DAY, name="at_ttl")
    assert codes(same_name) == 85  # IndexOptionsConflict
    with pytest.raises(OperationFailure) as other_key:
        sync_db.c.create_index("other", name="at_ttl")
    assert codes(other_key) == 86  # IndexKeySpecsConflict
    assert sync_db.c.index_information()["at_ttl"]["expireAfterSeconds"] == 14 * DAY


def test_coll_mod_changes_a_ttl_by_name_or_key_pattern(sync_db: Any) -> None:
    sync_db.c.create_index("at", expireAfterSeconds=14 * DAY, name="at_ttl")
    reply = sync_db.command("collMod", "c", index={"name": "at_ttl", "expireAfterSeconds": 3 * DAY})
    assert (reply["expireAfterSeconds_old"], reply["expireAfterSeconds_new"]) == (14 * DAY, 3 * DAY)
    assert sync_db.c.index_information()["at_ttl"]["expireAfterSeconds"] == 3 * DAY
    reply = sync_db.command("collMod", "c", index={"keyPattern": {"at": 1}, "expireAfterSeconds": 60})
    assert (reply["expireAfterSeconds_old"], reply["expireAfterSeconds_new"]) == (3 * DAY, 60)
    assert sync_db.c.index_information()["at_ttl"]["expireAfterSeconds"] == 60
    assert (
        "index"
        not in (
            sync_db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]["options"]
        )
    )


def test_coll_mod_errors(sync_db: Any) -> None:
    with pytest.raises(OperationFailure) as no_collection:
        sync_db.command("collMod", "missing", index={"name": "at_ttl", "expireAfterSeconds": 1})
    assert codes(no_collection) == 26  # NamespaceNotFound
    sync_db.c.create_index("at", expireAfterSeconds=DAY, name="at_ttl")
    with pytest.raises(OperationFailure) as no_index:
        sync_db.command("collMod", "c", index={"name": "nope", "expireAfterSeconds": 1})
    assert codes(no_index) == 27  # IndexNotFound
    with pytest.raises(OperationFailure) as no_pattern:
        sync_db.command("collMod", "c", index={"keyPattern": {"nope": 1}, "expireAfterSeconds": 1})
    assert codes(no_pattern) == 27
    with pytest.raises(OperationFailure) as both:
        sync_db.command(
            "collMod", "c", index={"name": "at_ttl", "keyPattern": {"at": 1}, "expireAfterSeconds": 1}
        )
    assert codes(both) == 72  # InvalidOptions


def test_drop_indexes_by_name(sync_db: Any) -> None:
    sync_db.c.create_index("at", expireAfterSeconds=DAY, name="at_ttl")
    sync_db.c.drop_index("at_ttl")
    assert "at_ttl" not in sync_db.c.index_information()
    with pytest.raises(OperationFailure) as again:
        sync_db.c.drop_index("at_ttl")
    assert codes(again) == 27  # IndexNotFound
