"""The project's own unified-format change-stream tests (`project-tests/`), run like the driver spec's.

The driver specification has one deployment-wide (`client.watch()`) test; these add what the connector's
deployment watch relies on and mongod guarantees: no events from admin, config or local; `ns` of
dropDatabase, rename, drop, create and createIndexes; nothing invalidating the stream; and mongod's
errors for a stream opened on the wrong namespace. Written for any server (MONGODB_TEST_URI), so they
check the emulator against mongod, not against itself.
"""

from __future__ import annotations

import pytest

from tests.conformance.specs import (
    EMULATED_SERVER,
    PROJECT_SPECS_DIR,
    ServerInfo,
    SpecTest,
    load_spec_tests,
    skip_reason,
)
from tests.conformance.unified import run_spec_test

_PROJECT_TESTS = load_spec_tests(PROJECT_SPECS_DIR)


@pytest.mark.conformance
@pytest.mark.parametrize("spec_test", [pytest.param(test, id=test.test_id) for test in _PROJECT_TESTS])
async def test_project_spec(
    spec_test: SpecTest, conformance_uri: str, conformance_server: ServerInfo
) -> None:
    reason = skip_reason(spec_test, conformance_server)
    if reason is not None:
        pytest.skip(reason)
    await run_spec_test(spec_test, conformance_uri)


def test_every_project_test_applies_to_a_7_0_replica_set() -> None:
    assert len(_PROJECT_TESTS) == 10
    assert [test.test_id for test in _PROJECT_TESTS if skip_reason(test, EMULATED_SERVER) is not None] == []
