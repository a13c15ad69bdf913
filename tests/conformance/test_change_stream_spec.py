"""The driver specification's change-stream tests (unified format), one pytest test per spec test.

Tests whose runOnRequirements exclude the server under test are skipped with the reason; on the emulator (a
7.0 single-node replica set) 66 of the 89 tests apply. `python -m tests.conformance.run` runs the same tests
without pytest and prints `N passed, M failed, K skipped`.
"""

from __future__ import annotations

import pytest

from tests.conformance.specs import (
    EMULATED_SERVER,
    ServerInfo,
    SpecTest,
    load_spec_tests,
    skip_reason,
    specs_dir,
)
from tests.conformance.unified import run_spec_test

#: The count EMULATOR-NOTES.md states for a 7.0/8.0 single-node replica set; guards the applicability logic.
APPLICABLE_ON_EMULATED_SERVER = 66

_SPECS_DIR = specs_dir()
_SPEC_TESTS = load_spec_tests(_SPECS_DIR) if _SPECS_DIR.is_dir() else []
_MISSING = pytest.mark.skip(reason=f"spec directory {_SPECS_DIR} not found (set MONGODB_SPECS_DIR)")


@pytest.mark.conformance
@pytest.mark.parametrize(
    "spec_test",
    [pytest.param(test, id=test.test_id) for test in _SPEC_TESTS] or [pytest.param(None, marks=_MISSING)],
)
async def test_spec(spec_test: SpecTest, conformance_uri: str, conformance_server: ServerInfo) -> None:
    reason = skip_reason(spec_test, conformance_server)
    if reason is not None:
        pytest.skip(reason)
    await run_spec_test(spec_test, conformance_uri)


@pytest.mark.skipif(not _SPEC_TESTS, reason=f"spec directory {_SPECS_DIR} not found")
def test_applicable_count_on_a_7_0_replica_set() -> None:
    applicable = [test for test in _SPEC_TESTS if skip_reason(test, EMULATED_SERVER) is None]
    assert len(_SPEC_TESTS) == 89
    assert len(applicable) == APPLICABLE_ON_EMULATED_SERVER


@pytest.mark.skipif(not _SPEC_TESTS, reason=f"spec directory {_SPECS_DIR} not found")
def test_requirements_skip_other_versions_and_topologies() -> None:
    by_id = {test.test_id: test for test in _SPEC_TESTS}
    pre_44 = by_id["change-streams: Test with document comment - pre 4.4"]
    assert skip_reason(pre_44, EMULATED_SERVER) == "test requirements: needs server <= 4.2.99 (have 7.0.0)"
    assert skip_reason(pre_44, ServerInfo((4, 2, 0), "replicaset")) is None
    ns_type = by_id["change-streams-nsType: nsType is present when creating views"]
    assert skip_reason(ns_type, ServerInfo((8, 1, 0), "replicaset")) is None
    assert skip_reason(ns_type, ServerInfo((8, 1, 0), "single")) is not None
    single = next(
        test for test in _SPEC_TESTS if test.description.startswith("The watch helper must not throw")
    )
    assert skip_reason(single, ServerInfo((7, 0, 0), "single")) is None
    assert skip_reason(single, EMULATED_SERVER) is not None
    serverless = ServerInfo((7, 0, 0), "replicaset", serverless=True)
    assert skip_reason(by_id["change-streams-clusterTime: clusterTime is present"], serverless) is not None
