"""Which change stream a client gets: the batch cursor only where every getMore reaches the cursor."""

from __future__ import annotations

import pytest
from pymongo import ReadPreference

from connector.sources.mongodb.client import DriverName, pins_getmores

PRIMARY = ReadPreference.PRIMARY.mode
SECONDARY_PREFERRED = ReadPreference.SECONDARY_PREFERRED.mode


@pytest.mark.parametrize(
    ("driver", "mode", "topology", "expected"),
    [
        ("pymongo", PRIMARY, "Single", True),
        ("pymongo", PRIMARY, "ReplicaSetWithPrimary", True),
        ("pymongo", SECONDARY_PREFERRED, "ReplicaSetWithPrimary", False),
        ("pymongo", PRIMARY, "Sharded", False),  # several mongos: a getMore may reach another one
        ("pymongo", PRIMARY, "LoadBalanced", False),
        ("pymongo", PRIMARY, "Unknown", False),
        ("motor", PRIMARY, "ReplicaSetWithPrimary", False),
    ],
)
def test_the_batch_cursor_only_where_getmores_reach_the_cursor(
    driver: DriverName, mode: int, topology: str, expected: bool
) -> None:
    assert pins_getmores(driver, mode, topology) is expected
