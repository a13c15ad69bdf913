"""The driver specification's transaction tests (unified format), one pytest test per spec test.

The pinned files (`spec-tests/transactions/`) are those whose tests can apply to a replica set; tests whose
runOnRequirements (or need of a secondary) exclude the server under test are skipped with the reason.
`python -m tests.conformance.run --suite transactions` runs the same tests without pytest.

`EMULATOR_GAPS` lists the tests the emulator fails, each with its cause (STATUS.md): they run as strict
expected failures, so fixing a gap makes the suite say so.
"""

from __future__ import annotations

import os
from typing import Final

import pytest

from tests.conformance.specs import (
    EMULATED_SERVER,
    TRANSACTIONS_GLOB,
    TRANSACTIONS_SUBDIR,
    ServerInfo,
    SpecTest,
    load_spec_tests,
    skip_reason,
    specs_dir,
)
from tests.conformance.unified import run_spec_test

_DIR = specs_dir() / TRANSACTIONS_SUBDIR
_SPEC_TESTS = load_spec_tests(_DIR, TRANSACTIONS_GLOB) if _DIR.is_dir() else []
_MISSING = pytest.mark.skip(reason=f"spec directory {_DIR} not found (set MONGODB_SPECS_DIR)")

_DDL = "DDL in a transaction (create, createIndexes) is applied at once, not at commit"
EMULATOR_GAPS: Final = {
    "create-collection: explicitly create collection using create command": _DDL,
    "create-collection: implicitly create collection using insert": _DDL,
    "create-index: create index on a non-existing collection": _DDL,
    "create-index: create index on a collection created within the same transaction": _DDL,
    "isolation: two transactions": "no snapshot isolation: a transaction reads others' later commits",
}

#: Pinned tests, and those that apply to the emulated 7.0 single-node replica set.
PINNED, APPLICABLE = 174, 168


def _param(test: SpecTest) -> object:
    gap = EMULATOR_GAPS.get(test.test_id)
    if gap is None or os.environ.get("MONGODB_TEST_URI"):
        return pytest.param(test, id=test.test_id)
    return pytest.param(test, id=test.test_id, marks=pytest.mark.xfail(reason=gap, strict=True))


@pytest.mark.conformance
@pytest.mark.parametrize(
    "spec_test", [_param(test) for test in _SPEC_TESTS] or [pytest.param(None, marks=_MISSING)]
)
async def test_spec(spec_test: SpecTest, conformance_uri: str, conformance_server: ServerInfo) -> None:
    reason = skip_reason(spec_test, conformance_server)
    if reason is not None:
        pytest.skip(reason)
    await run_spec_test(spec_test, conformance_uri)


@pytest.mark.skipif(not _SPEC_TESTS, reason=f"spec directory {_DIR} not found")
def test_applicable_count_on_a_single_node_7_0_replica_set() -> None:
    applicable = [test for test in _SPEC_TESTS if skip_reason(test, EMULATED_SERVER) is None]
    assert len(_SPEC_TESTS) == PINNED
    assert len(applicable) == APPLICABLE
    assert set(EMULATOR_GAPS) <= {test.test_id for test in applicable}
